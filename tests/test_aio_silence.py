"""read_timeout and write_timeout on aiomysql connections (`aio._drivers._Silence`): silence
times out, not the length of a big read or write, as PyMySQL's per-recv/per-send timeouts.
The connection, its transport and the loop's clock are stand-ins: what is decided here is when
the timer cuts; tests/test_aio.py checks the same against the lab's MariaDB."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aurora_smartdriver.aio._drivers import _Silence


class _Loop:
    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Callable[..., None], tuple[Any, ...]]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> Any:
        entry = (self.now + delay, fn, args)
        self.timers.append(entry)
        loop = self

        class _Handle:
            def cancel(self) -> None:
                if entry in loop.timers:
                    loop.timers.remove(entry)

            def when(self) -> float:
                return entry[0]

        return _Handle()

    def advance(self, to: float) -> None:
        """Run the timers due up to ``to``, in order, moving the clock."""
        while True:
            due = sorted((t for t in self.timers if t[0] <= to), key=lambda t: t[0])
            if not due:
                break
            when, fn, args = due[0]
            self.timers.remove(due[0])
            self.now = when
            fn(*args)
        self.now = to


class _Transport:
    def __init__(self) -> None:
        self.unsent = 0
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def abort(self) -> None:
        self.aborted = True


class _Writer:
    def __init__(self) -> None:
        self.transport = _Transport()


class _Conn:
    def __init__(self, loop: _Loop) -> None:
        self._loop = loop
        self._writer = _Writer()


def test_a_full_buffer_that_drains_and_fills_again_is_not_one_long_wait() -> None:
    loop = _Loop()
    conn, silence = _Conn(loop), _Silence(None, 10.0)
    conn._writer.transport.unsent = 100
    silence.wrote(conn, 1000)  # t=0: the kernel's buffers are full
    loop.advance(0.1)
    conn._writer.transport.unsent = 0  # drained at 0.1 s (no check ran since)
    loop.advance(9.9)
    conn._writer.transport.unsent = 100
    silence.wrote(conn, 1000)  # t=9.9: full again
    loop.advance(10.5)
    assert not conn._writer.transport.aborted and silence.timed_out is None
    loop.advance(19.8)  # nothing taken since 10.0: 9.8 s of silence
    assert not conn._writer.transport.aborted
    loop.advance(20.1)
    assert conn._writer.transport.aborted
    assert silence.timed_out == (2006, "MySQL server has gone away (timed out)")


def test_a_write_the_server_keeps_taking_slowly_is_not_cut() -> None:
    loop = _Loop()
    conn, silence = _Conn(loop), _Silence(None, 1.0)
    conn._writer.transport.unsent = 10_000
    silence.wrote(conn, 10_000)
    for step in range(1, 30):  # 100 bytes taken every 0.5 s: 15 s in all
        loop.advance(step * 0.5)
        conn._writer.transport.unsent -= 100
    assert not conn._writer.transport.aborted


class _Reader:
    def __init__(self) -> None:
        self.fed: list[bytes] = []

    def feed_data(self, data: bytes) -> None:
        self.fed.append(data)


def test_a_big_read_that_keeps_arriving_is_not_cut_and_silence_is() -> None:
    loop = _Loop()
    conn, silence = _Conn(loop), _Silence(1.0, None)
    reader = _Reader()
    silence.watch_arrivals(reader, loop)  # type: ignore[arg-type]
    silence.reading_since = loop.time()  # one readexactly of a 16 MB packet
    silence.arm(conn, 1.0)
    for step in range(1, 20):  # a chunk every 0.5 s: 9.5 s for the whole read
        loop.advance(step * 0.5)
        reader.feed_data(b"x" * 1000)
    assert not conn._writer.transport.aborted
    assert len(reader.fed) == 19  # the chunks still reach the stream
    loop.advance(10.6)  # then nothing for 1.1 s
    assert conn._writer.transport.aborted
    assert silence.timed_out == (
        2013,
        "Lost connection to MySQL server during query (timed out)",
    )


def test_no_timer_runs_while_nothing_waits() -> None:
    loop = _Loop()
    conn, silence = _Conn(loop), _Silence(1.0, 1.0)
    silence.reading_since = 0.0
    silence.arm(conn, 1.0)
    loop.advance(0.2)
    silence.reading_since = None  # the read got its bytes
    loop.advance(5.0)
    assert not conn._writer.transport.aborted
    assert loop.timers == []  # disarmed until the next wait


def test_a_write_that_stalls_after_a_read_is_cut_by_write_timeout_not_the_reads_timer() -> None:
    loop = _Loop()
    conn, silence = _Conn(loop), _Silence(30.0, 5.0)
    silence.reading_since = 0.0  # a query's read: its check is due at 30 s
    silence.arm(conn, 30.0)
    loop.advance(0.1)
    silence.reading_since = None  # answered
    conn._writer.transport.unsent = 100
    silence.wrote(conn, 1000)  # t=0.1: the server stops taking bytes
    loop.advance(5.2)
    assert silence.timed_out == (2006, "MySQL server has gone away (timed out)")


def test_a_silent_answer_is_cut_by_read_timeout_not_a_pending_write_check() -> None:
    loop = _Loop()
    conn, silence = _Conn(loop), _Silence(1.0, 60.0)
    conn._writer.transport.unsent = 100
    silence.wrote(conn, 1000)  # a big write: its check is due at 60 s
    loop.advance(0.2)
    conn._writer.transport.unsent = 0  # taken
    silence.reading_since = loop.time()  # then no answer
    silence.arm(conn, 1.0)
    loop.advance(1.3)
    assert silence.timed_out == (
        2013,
        "Lost connection to MySQL server during query (timed out)",
    )
