"""Probe: ask every host of the DSN for its own role and lag, for clusters without metadata.

Self-managed primary/replica setups have no table listing the members, so the DSN's host list
is the membership and each host is asked, on a connection of its own, whether it is in
recovery / read-only and how far behind it is. The hosts are asked in parallel threads; the
whole probe takes at most the setting `connect_timeout`, and a host that has not answered by
then, or failed to, is left out of the answer (the monitor sees it as gone); a late host's
thread finishes in the background and closes its connection.

Roles: PostgreSQL `pg_is_in_recovery()`; MySQL `@@read_only OR @@innodb_read_only`, so that
both a self-managed replica (`read_only`) and an Aurora reader (`innodb_read_only`) count as
readers whatever `read_only_variable` says. Lag: PostgreSQL `statement_timestamp() -
pg_last_xact_replay_timestamp()` while the replica has received WAL it has not replayed (0
once caught up); MySQL `Seconds_Behind_Source` (`Seconds_Behind_Master` on MariaDB) of `SHOW
REPLICA STATUS`, unknown when replication is not running.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from aurora_smartdriver.discovery._base import (
    Answer,
    Connector,
    DiscoveryError,
    SourceContext,
    Unreachable,
)
from aurora_smartdriver.discovery._values import BadValue, flag, instance_ids, number
from aurora_smartdriver.topology import Host, Role

__all__ = ["Probe", "role_of"]

NAME = "probe"
_log = logging.getLogger("aurora_smartdriver.discovery")

_PG_SQL = """\
SELECT pg_is_in_recovery(),
       CASE WHEN NOT pg_is_in_recovery() THEN 0
            WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
            ELSE EXTRACT(EPOCH FROM statement_timestamp() - pg_last_xact_replay_timestamp()) * 1000
       END"""
_MY_ROLE_SQL = "SELECT @@read_only OR @@innodb_read_only"
_MY_LAG_COLUMNS = ("Seconds_Behind_Source", "Seconds_Behind_Master")
_MIN_TIMEOUT = 0.001
_HURRY_CHECK = 0.05
"""Seconds between looks at `Probe.hurry` while a probe waits for silent hosts."""


class Probe:
    """The `probe` topology source. The connection given to `fetch` is not used.

    `hurry`: when it is set and returns a number (the monitor's returns
    `fast_refresh_interval` while in fast mode, None otherwise; asked while `fetch` waits),
    `fetch` returns once some host answered and no other has answered or failed for that
    long, instead of waiting up to `connect_timeout` for every host: a writer's death is when
    hosts stop answering (a cut-off host answers nothing until the deadline), and what is
    wanted then is the new writer, soon, by asking again. A host still silent then keeps the
    row of the previous answer if it was a reader there (lag unknown); one that was the writer
    is left out.
    """

    name = NAME
    uses_connection = False

    def __init__(self) -> None:
        self.hurry: Callable[[], float | None] | None = None
        self._last: dict[tuple[str, int], Host] = {}

    def fetch(self, conn: Any, ctx: SourceContext) -> Answer:
        connect = ctx.connect
        if connect is None:
            raise DiscoveryError(f"{NAME}: the source context has no connect function")
        hosts = ctx.spec.hosts
        ids = instance_ids(hosts)
        deadline = time.monotonic() + ctx.settings.connect_timeout
        answers: dict[int, Host] = {}
        failures: dict[int, str] = {}
        done = threading.Condition()
        closed = False

        def ask(index: int) -> None:
            (host, port), instance_id = hosts[index], ids[index]
            try:
                role, lag_ms = _ask(ctx, connect, host, port, deadline)
            except Exception as exc:
                level = (
                    logging.DEBUG
                    if ctx.adapter.error_kind(exc) == "disconnect"
                    else logging.WARNING
                )
                _log.log(level, "probe: %s:%s left out: %s", host, port, exc)
                with done:
                    failures[index] = _one_line(exc)
                    done.notify_all()
                return
            with done:
                if not closed:
                    answers[index] = Host(instance_id, host, port, role, lag_ms=lag_ms)
                done.notify_all()

        for i in range(len(hosts)):
            threading.Thread(
                target=ask, args=(i,), name=f"aurora_smartdriver-probe-{i}", daemon=True
            ).start()
        hurry = self.hurry
        heard = 0  # answers and failures so far
        news_at = time.monotonic()  # when the last one came
        with done:
            while len(answers) + len(failures) < len(hosts):
                now = time.monotonic()
                if len(answers) + len(failures) != heard:
                    heard, news_at = len(answers) + len(failures), now
                grace = hurry() if hurry is not None else None
                until = deadline
                if grace is not None and answers:
                    until = min(deadline, news_at + grace)
                if now >= until:
                    break
                # Fast mode may start while this waits: look again now and then.
                done.wait(min(until - now, _HURRY_CHECK) if hurry is not None else until - now)
            closed = True  # a host answering after this is not counted
            rows = [answers[i] for i in sorted(answers)]
            failed = dict(failures)
            silent = [i for i in range(len(hosts)) if i not in answers and i not in failures]
        if not rows:
            timeout = ctx.settings.connect_timeout
            said = [
                f"{host}:{port}: " + failed.get(i, f"no answer within connect_timeout={timeout:g}s")
                for i, (host, port) in enumerate(hosts)
            ]
            raise Unreachable(f"{NAME}: no host answered: " + "; ".join(said))
        if time.monotonic() < deadline:  # returned early: silent readers keep their rows
            for i in silent:
                before = self._last.get(hosts[i])
                if before is not None and before.role is Role.READER:
                    rows.append(Host(before.instance_id, before.host, before.port, Role.READER))
        self._last = {h.endpoint: h for h in rows}
        return Answer(tuple(rows), ctx.now(), self_reported=True)


def role_of(conn: Any, ctx: SourceContext) -> Role:
    """What the instance behind `conn` says of itself: writer or reader.

    The check every source's writer passes before the monitor believes it (see
    `Answer.confirmed_writer`): PostgreSQL `pg_is_in_recovery()`, MySQL `@@read_only OR
    @@innodb_read_only`.
    """
    if ctx.spec.engine == "postgresql":
        [(in_recovery,)] = ctx.adapter.query(conn, "SELECT pg_is_in_recovery()").rows
        return Role.READER if flag(in_recovery, "pg_is_in_recovery()") else Role.WRITER
    [(read_only,)] = ctx.adapter.query(conn, _MY_ROLE_SQL).rows
    return Role.READER if flag(read_only, "read-only") else Role.WRITER


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _ask(
    ctx: SourceContext, connect: Connector, host: str, port: int, deadline: float
) -> tuple[Role, float | None]:
    """One host's role and lag, on a connection of its own that is closed afterwards."""
    conn = connect(host, port, max(deadline - time.monotonic(), _MIN_TIMEOUT))
    try:
        if ctx.spec.engine == "postgresql":
            return _postgresql(ctx, conn)
        return _mysql(ctx, conn)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def _postgresql(ctx: SourceContext, conn: Any) -> tuple[Role, float | None]:
    [(in_recovery, lag)] = ctx.adapter.query(conn, _PG_SQL).rows
    if not flag(in_recovery, "pg_is_in_recovery()"):
        return Role.WRITER, 0.0
    lag_ms = number(lag, "replay lag")
    return Role.READER, None if lag_ms is None else max(lag_ms, 0.0)


def _mysql(ctx: SourceContext, conn: Any) -> tuple[Role, float | None]:
    [(read_only,)] = ctx.adapter.query(conn, _MY_ROLE_SQL).rows
    if not flag(read_only, "read-only"):
        return Role.WRITER, 0.0
    status = ctx.adapter.query(conn, "SHOW REPLICA STATUS").records()
    if not status:
        return Role.READER, None
    column = next((c for c in _MY_LAG_COLUMNS if c in status[0]), None)
    if column is None:
        raise BadValue(f"SHOW REPLICA STATUS has none of the columns {list(_MY_LAG_COLUMNS)}")
    seconds = number(status[0][column], column)
    return Role.READER, None if seconds is None else seconds * 1000.0
