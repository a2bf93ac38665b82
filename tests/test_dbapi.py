"""The drop-in DB-API layer against the lab: PEP 249, the driver's extras, routing, errors."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from typing import Any

import psycopg
import pymysql
import pytest

import aurora_smartdriver as asd
from aurora_smartdriver import psycopg as asd_psycopg
from aurora_smartdriver import pymysql as asd_pymysql
from aurora_smartdriver.lab import Lab


def _module(lab: Lab) -> Any:
    return asd_psycopg if lab.state().engine == "postgresql" else asd_pymysql


def _driver(lab: Lab) -> Any:
    return psycopg if lab.state().engine == "postgresql" else pymysql


def _table(conn: Any, name: str) -> None:
    cur = conn.cursor()
    cur.execute(f"CREATE TABLE IF NOT EXISTS {name} (id VARCHAR(64) PRIMARY KEY, n INT)")
    conn.commit()


def test_module_globals_are_the_drivers(aurora_lab: Lab) -> None:
    module, driver = _module(aurora_lab), _driver(aurora_lab)
    assert module.apilevel == "2.0"
    assert module.paramstyle == driver.paramstyle
    assert module.threadsafety == driver.threadsafety
    for name in (
        "Error",
        "OperationalError",
        "IntegrityError",
        "ProgrammingError",
        "STRING",
        "Date",
    ):
        assert getattr(module, name) is getattr(driver, name)
    assert issubclass(module.FailoverSucceeded, driver.OperationalError)
    assert issubclass(module.FailoverSucceeded, asd.FailoverSucceeded)
    assert issubclass(module.NoHostAvailable, asd.NoHostAvailable)
    assert issubclass(module.AuthenticationFailed, asd.AuthenticationFailed)
    assert issubclass(module.AuthenticationFailed, driver.OperationalError)


def test_connect_lands_on_the_writer_and_speaks_pep_249(aurora_lab: Lab) -> None:
    conn = asd.connect(aurora_lab.dsn)
    try:
        assert conn.instance_id == aurora_lab.writer.id
        _table(conn, "dbapi_rows")
        cur = conn.cursor()
        key = uuid.uuid4().hex
        cur.executemany("INSERT INTO dbapi_rows VALUES (%s, %s)", [(key + "a", 1), (key + "b", 2)])
        conn.commit()
        cur.execute("SELECT id, n FROM dbapi_rows WHERE id LIKE %s ORDER BY id", (key + "%",))
        assert [d[0] for d in cur.description] == ["id", "n"]
        assert cur.rowcount == 2
        assert cur.fetchone() == (key + "a", 1)
        assert list(cur.fetchall()) == [(key + "b", 2)]  # PyMySQL gives a tuple
        cur.execute("INSERT INTO dbapi_rows VALUES (%s, %s)", (key + "c", 3))
        conn.rollback()
        cur.execute("SELECT count(*) FROM dbapi_rows WHERE id = %s", (key + "c",))
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT n FROM dbapi_rows WHERE id LIKE %s ORDER BY n", (key + "%",))
        assert list(cur.fetchmany(1)) == [(1,)]
        assert list(cur) == [(2,)]
        assert cur.connection is conn
    finally:
        conn.close()
    conn.close()  # idempotent


def test_driver_errors_are_the_drivers_own(aurora_lab: Lab) -> None:
    module, driver = _module(aurora_lab), _driver(aurora_lab)
    conn = asd.connect(aurora_lab.dsn)
    try:
        _table(conn, "dbapi_dupes")
        key = uuid.uuid4().hex
        cur = conn.cursor()
        cur.execute("INSERT INTO dbapi_dupes VALUES (%s, 1)", (key,))
        with pytest.raises(driver.IntegrityError):
            cur.execute("INSERT INTO dbapi_dupes VALUES (%s, 1)", (key,))
        conn.rollback()
        with pytest.raises(module.ProgrammingError):
            cur.execute("SELECT * FROM no_such_table_anywhere")
        conn.rollback()
        cur.execute("SELECT 1")  # the connection is still good after application errors
        assert cur.fetchone() == (1,)
    finally:
        conn.close()


def test_a_closed_connection_and_its_cursors_refuse_work(aurora_lab: Lab) -> None:
    driver = _driver(aurora_lab)
    conn = asd.connect(aurora_lab.dsn)
    cur = conn.cursor()
    conn.close()
    with pytest.raises(driver.Error):
        conn.cursor()
    with pytest.raises(driver.Error):
        cur.execute("SELECT 1")


def test_psycopg_extras_and_context_manager(aurora_lab_postgresql: Lab) -> None:
    with asd.connect(aurora_lab_postgresql.dsn) as conn:
        assert conn.info.server_version >= 150000  # the driver's own attribute
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        conn.commit()  # psycopg refuses to change autocommit inside a transaction
        conn.autocommit = True
        assert conn.autocommit is True
        conn.execute("CREATE TABLE IF NOT EXISTS dbapi_cm (x INT)")
        conn.autocommit = False
        conn.execute("INSERT INTO dbapi_cm VALUES (7)")
    # psycopg's semantics: leaving the block committed, then closed.
    assert conn.closed
    with asd.connect(aurora_lab_postgresql.dsn) as other:
        assert other.execute("SELECT count(*) FROM dbapi_cm WHERE x = 7").fetchone()[0] >= 1


def test_pymysql_extras_and_context_manager(aurora_lab_mariadb: Lab) -> None:
    with asd.connect(aurora_lab_mariadb.dsn) as conn:
        assert "MariaDB" in conn.get_server_info()  # the driver's own method
        conn.autocommit(True)
        assert conn.get_autocommit() is True
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    assert conn._closed


def test_reader_role_lands_on_a_reader(aurora_lab: Lab) -> None:
    conn = asd.connect(aurora_lab.dsn, role="reader")
    try:
        assert conn.instance_id in {r.id for r in aurora_lab.readers}
    finally:
        conn.close()


def test_read_only_moves_to_a_reader_at_the_transaction_boundary(aurora_lab: Lab) -> None:
    conn = asd.connect(aurora_lab.dsn)
    try:
        writer = conn.instance_id
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()
        conn.read_only = True
        # Without autocommit that SELECT may have opened a transaction (psycopg sends BEGIN;
        # on MySQL a SELECT of an InnoDB table does): the move waits for its end.
        assert conn.instance_id == writer
        conn.commit()
        assert conn.instance_id in {r.id for r in aurora_lab.readers}
        cur = conn.cursor()
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
        conn.read_only = False
        conn.rollback()
        assert conn.instance_id == writer
    finally:
        conn.close()


def test_session_state_follows_a_move(aurora_lab_postgresql: Lab) -> None:
    conn = asd.connect(aurora_lab_postgresql.dsn)
    try:
        conn.autocommit = True
        conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        conn.read_only = True
        assert conn.instance_id in {r.id for r in aurora_lab_postgresql.readers}
        assert conn._raw.autocommit is True
        assert conn._raw.isolation_level == psycopg.IsolationLevel.SERIALIZABLE
    finally:
        conn.close()


def test_reader_fallback_fail_raises_a_driver_operational_error(aurora_lab: Lab) -> None:
    for reader in aurora_lab.readers:
        aurora_lab.crash(reader.id)
    driver = _driver(aurora_lab)
    spec_dsn = aurora_lab.dsn + "&reader_fallback=fail&cluster_id=" + uuid.uuid4().hex
    with pytest.raises(driver.OperationalError) as caught:
        asd.connect(spec_dsn, role="reader", staleness_window=1)
    assert isinstance(caught.value, asd.NoHostAvailable)
    assert aurora_lab.state().password not in str(caught.value)


def test_dbapi_module_connect_takes_driver_keywords(aurora_lab: Lab) -> None:
    state = aurora_lab.state()
    keywords: dict[str, Any] = {
        "host": state.cluster_endpoint,
        "port": state.port,
        "user": state.user,
        "password": state.password,
        "dns_server": f"{state.dns.address}:{state.dns.port}",
        "instance_host_pattern": state.instance_host_pattern,
    }
    if state.engine == "postgresql":
        conn = asd_psycopg.connect(dbname=state.database, **keywords)
    else:
        keywords.update(replica_status_schema="aurora_lab", read_only_variable="read_only")
        conn = asd_pymysql.connect(database=state.database, **keywords)
    try:
        assert conn.instance_id == aurora_lab.writer.id
    finally:
        conn.close()


def test_connect_to_a_hung_writer_gives_up_at_the_deadline(aurora_lab: Lab) -> None:
    driver = _driver(aurora_lab)
    aurora_lab.hang(aurora_lab.writer.id)
    with pytest.raises(driver.OperationalError):
        asd.connect(aurora_lab.dsn, connect_timeout=1, cluster_id=uuid.uuid4().hex)


def test_statement_timeout_cancels_a_long_statement(aurora_lab: Lab) -> None:
    driver = _driver(aurora_lab)
    conn = asd.connect(aurora_lab.dsn, statement_timeout="0.3s", cluster_id=uuid.uuid4().hex)
    try:
        cur = conn.cursor()
        sleep = (
            "SELECT pg_sleep(3)" if aurora_lab.state().engine == "postgresql" else "SELECT SLEEP(3)"
        )
        if aurora_lab.state().engine == "postgresql":
            with pytest.raises(driver.OperationalError):
                cur.execute(sleep)
        else:
            # MariaDB's max_statement_time interrupts the statement with error 1969.
            with pytest.raises(driver.Error) as caught:
                cur.execute(sleep)
                cur.fetchall()
            assert caught.value.args[0] == 1969
    finally:
        conn.close()


def test_only_the_needed_driver_is_imported(aurora_lab_mariadb: Lab) -> None:
    script = (
        "import sys\n"
        "sys.modules['psycopg'] = None  # as if psycopg were not installed\n"
        "import aurora_smartdriver as asd\n"
        "from aurora_smartdriver import pymysql\n"
        "conn = asd.connect(sys.argv[1])\n"
        "cur = conn.cursor(); cur.execute('SELECT 1'); print(cur.fetchone()[0])\n"
        "conn.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, aurora_lab_mariadb.dsn],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


def test_connections_are_usable_from_many_threads(aurora_lab: Lab) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                conn = asd.connect(aurora_lab.dsn)
                cur = conn.cursor()
                cur.execute("SELECT 1")
                assert cur.fetchone() == (1,)
                conn.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
