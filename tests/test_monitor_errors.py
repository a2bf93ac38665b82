"""What the caller is told when nothing answers, and when the DSN itself is wrong."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import aurora_smartdriver as asd
from aurora_smartdriver import _runtime
from aurora_smartdriver.errors import ConfigError
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.monitor import config_problem

PASSWORD = "s3cret-pw-never-shown"


@pytest.fixture(autouse=True)
def _close_runtimes() -> Iterator[None]:
    yield
    _runtime.close_all()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that completes the handshake and never answers (a hung server)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_a_host_that_never_answers_is_named_with_what_was_tried(
    silent_port: int, scheme: str
) -> None:
    dsn_text = (
        f"{scheme}://app:{PASSWORD}@127.0.0.1:{silent_port}/app"
        f"?connect_timeout=1s&cluster_id={uuid.uuid4().hex}"
    )
    with pytest.raises(asd.NoHostAvailable) as caught:
        asd.connect(dsn_text)
    message = str(caught.value)
    assert f"127.0.0.1:{silent_port}" in message, message  # which host
    assert "connect" in message  # what was tried
    assert "no answer" in message or "timeout" in message or "timed out" in message, message
    assert PASSWORD not in message


def _dsn_with(lab: Lab, **changes: str) -> str:
    """The lab's DSN with its database replaced and/or parameters added."""
    state = lab.state()
    text = lab.dsn
    database = changes.pop("database", None)
    if database is not None:
        text = text.replace(f"/{state.database}?", f"/{database}?", 1)
    extra = "".join(f"&{k}={v}" for k, v in changes.items())
    return f"{text}{extra}&cluster_id={uuid.uuid4().hex}"


def test_a_database_that_does_not_exist_is_a_configuration_error(aurora_lab: Lab) -> None:
    with pytest.raises(ConfigError) as caught:
        asd.connect(_dsn_with(aurora_lab, database="no_such_db"))
    assert isinstance(caught.value, ValueError)
    assert caught.value.parameter == "database"
    assert "no_such_db" in str(caught.value)
    assert aurora_lab.state().password not in str(caught.value)


def test_a_malformed_driver_parameter_is_a_configuration_error(
    aurora_lab_postgresql: Lab,
) -> None:
    with pytest.raises(ConfigError) as caught:
        asd.connect(_dsn_with(aurora_lab_postgresql, sslmode="bogus"))
    assert "sslmode" in str(caught.value)
    assert caught.value.parameter == "sslmode"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (Exception('connection failed: FATAL:  database "x" does not exist'), "database"),
        (Exception('connection is bad: invalid sslmode value: "bogus"'), "sslmode"),
        (Exception('invalid connection option "bogusopt"\n'), "bogusopt"),
        (Exception(1049, "Unknown database 'x'"), "database"),
    ],
)
def test_configuration_failures_are_recognised(error: Exception, expected: str) -> None:
    found = config_problem(error)
    assert found is not None and found[0] == expected


@given(st.sampled_from([2003, 2013, 1045, 1290, 1205]), st.text(max_size=40))
def test_other_mysql_failures_are_not_configuration_errors(code: int, text: str) -> None:
    assert config_problem(Exception(code, text)) is None


@given(st.text(max_size=80).filter(lambda t: "does not exist" not in t and "invalid" not in t))
def test_other_postgresql_failures_are_not_configuration_errors(text: str) -> None:
    error: Any = Exception(text)
    assert config_problem(error) is None


EXIT_SCRIPT = """
import sys, time
import aurora_smartdriver as asd
try:
    asd.connect(sys.argv[1])
except asd.NoHostAvailable:
    pass
print(time.monotonic(), flush=True)
"""


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_exit_does_not_wait_for_an_attempt_on_a_hung_host(silent_port: int, scheme: str) -> None:
    """The monitor's own attempt on a host that never answers is left to end on its own."""
    dsn_text = f"{scheme}://app:{PASSWORD}@127.0.0.1:{silent_port}/app?connect_timeout=4s"
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, dsn_text],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ended = time.monotonic()
    assert done.returncode == 0, done.stderr
    gave_up = float(done.stdout.strip().splitlines()[-1])
    # Interpreter shutdown takes a fraction of a second; a further connect_timeout is 4 s.
    assert ended - gave_up < 3.0
