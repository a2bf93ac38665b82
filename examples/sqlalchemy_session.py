"""Read-only request handlers on replicas with the ORM: python examples/sqlalchemy_session.py

Two session factories over one engine: `WriteSession` for handlers that change data (the
writer), `ReadSession` for handlers that only read (a replica, via the engine option
`aurora_role="reader"`). Connections go back to SQLAlchemy's pool moved to the writer again, so
the next `WriteSession` never lands on a replica.
"""

from __future__ import annotations

from sqlalchemy import String, create_engine, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from aurora_smartdriver import lab
from aurora_smartdriver.sqlalchemy import engine_url


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(50))


def place_order(session: Session, item: str) -> None:
    session.add(Order(item=item))
    session.commit()


def count_orders(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Order)) or 0


def main() -> None:
    with lab.start("mariadb", replicas=1) as cluster:
        engine = create_engine(engine_url(cluster.dsn), pool_size=5)
        Base.metadata.create_all(engine)
        WriteSession = sessionmaker(bind=engine)
        ReadSession = sessionmaker(bind=engine.execution_options(aurora_role="reader"))

        with WriteSession() as session:
            place_order(session, "book")
        cluster.wait_replicated()
        with ReadSession() as session:
            read_only = session.execute(text("SELECT @@read_only")).scalar()
            print(f"orders seen on a replica (@@read_only={read_only}):", count_orders(session))
            assert read_only == 1
        with WriteSession() as session:  # back on the writer
            assert session.execute(text("SELECT @@read_only")).scalar() == 0
            place_order(session, "lamp")
            print("orders on the writer:", count_orders(session))
        engine.dispose()


if __name__ == "__main__":
    main()
