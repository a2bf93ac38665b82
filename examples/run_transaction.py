"""Transactions that survive a failover: python examples/run_transaction.py

`Cluster.run_transaction(fn)` runs `fn(conn)` in a transaction on the writer and commits when it
returns. When a failover rolls the transaction back, it runs `fn` again on the new writer; when
the connection died during COMMIT (the outcome is unknown) it re-runs only an idempotent `fn`.
Here four threads move money between accounts while the writer is killed; afterwards the total
is unchanged and every transfer the program counted as done is in the database exactly once.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import aurora_smartdriver as asd
from aurora_smartdriver import lab

ACCOUNTS = 10


def setup(conn: asd.Connection) -> None:
    cur = conn.cursor()
    cur.execute("DROP TABLE IF EXISTS accounts, transfers")
    cur.execute("CREATE TABLE accounts (id integer PRIMARY KEY, balance integer NOT NULL)")
    cur.execute("CREATE TABLE transfers (id text PRIMARY KEY)")
    cur.executemany("INSERT INTO accounts VALUES (%s, 100)", [(i,) for i in range(ACCOUNTS)])


def transfer(source: int, target: int, transfer_id: str) -> Callable[[asd.Connection], None]:
    def run(conn: asd.Connection) -> None:
        cur = conn.cursor()
        # The transfer id makes the transaction idempotent: a re-run after an unknown outcome
        # finds its own row and does nothing.
        cur.execute("SELECT 1 FROM transfers WHERE id = %s", (transfer_id,))
        if cur.fetchone():
            return
        # Rows locked in id order, so that concurrent transfers cannot deadlock.
        for account, delta in sorted([(source, -1), (target, 1)]):
            cur.execute(
                "UPDATE accounts SET balance = balance + %s WHERE id = %s", (delta, account)
            )
        cur.execute("INSERT INTO transfers VALUES (%s)", (transfer_id,))

    return run


def main() -> None:
    with lab.start("postgresql", replicas=1, dns_lag=10.0) as cluster_lab:
        cluster = asd.Cluster(cluster_lab.dsn, failover_timeout="20s")
        done: list[str] = []
        stop = threading.Event()

        def client(n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                tid = f"{n}-{i}-{uuid.uuid4().hex[:6]}"
                fn = transfer(i % ACCOUNTS, (i + n + 1) % ACCOUNTS, tid)
                cluster.run_transaction(fn, retries=5, idempotent=True)
                done.append(tid)

        with cluster:
            cluster.run_transaction(setup)
            clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
            for t in clients:
                t.start()
            stop.wait(1.0)
            report = cluster_lab.failover()
            print(f"failover {report.old_writer} -> {report.new_writer} in {report.duration:.2f}s")
            stop.wait(1.0)
            stop.set()
            for t in clients:
                t.join()

            with cluster.writer() as conn:
                cur = conn.cursor()
                cur.execute("SELECT sum(balance) FROM accounts")
                (total,) = cur.fetchone() or (None,)
                cur.execute("SELECT id FROM transfers")
                stored = {tid for (tid,) in cur.fetchall()}
        print(f"{len(done)} transfers done, total balance {total} (started with {ACCOUNTS * 100})")
        assert total == ACCOUNTS * 100
        assert set(done) <= stored and len(stored) == len(set(stored))


if __name__ == "__main__":
    main()
