"""Process helpers for the lab: spawn server processes in their own session, probe, signal, reap."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

# Popen objects of the processes this interpreter started, so they can be reaped (no zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}


def server_user() -> str | None:
    """The OS account database servers run as: None (ourselves) unless we are root.

    PostgreSQL refuses to run as root, so as root the lab runs it as ``postgres`` (created by the
    Debian package) or, failing that, ``nobody``.
    """
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root but neither a 'postgres' nor a 'nobody' account exists")


def chown_tree(path: Path, user: str | None) -> None:
    """Give ``path`` and everything below it to ``user`` (no-op when ``user`` is None)."""
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def run(
    args: Sequence[str],
    *,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    cwd: Path | None = None,
) -> str:
    """Run a command to completion; raise with its output when it fails."""
    proc = subprocess.run(
        list(args),
        user=user,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=False,
    )
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed with exit code {proc.returncode}:\n{out[-4000:]}")
    return out


def spawn(
    args: Sequence[str],
    *,
    log: Path,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Start a long-running server process in a new session (its pid is its process group id)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(args),
            user=user,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    return proc.pid


def _reap(pid: int) -> None:
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        del _children[pid]


def state(pid: int) -> str | None:
    """The process state letter from /proc (R, S, T, Z, ...), or None when it does not exist."""
    _reap(pid)
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may contain spaces: the state follows the last ')'.
    return raw.rsplit(")", 1)[1].split()[0]


def alive(pid: int | None) -> bool:
    """True when the process exists and is not a zombie (``kill -0`` succeeds on zombies)."""
    if pid is None:
        return False
    st = state(pid)
    return st is not None and st not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Pids of the live processes in a process group."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = raw.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process."""
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X"):
            parents[int(entry.name)] = int(fields[1])
    return parents


def tree(pid: int) -> list[int]:
    """A process and all its live descendants, parents first.

    A server's children may leave its process group (PostgreSQL backends call setsid()), so
    the parent links, not the group, say what belongs to a node.
    """
    parents = _parents()
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    found = [pid] if pid in parents else []
    for current in found:
        found.extend(children.get(current, []))
    return found


_STOPPED = (None, "T", "t", "Z", "X")  # stopped, or gone


def _wait_stopped(pids: list[int], timeout: float = 5.0) -> None:
    """Wait until every one of ``pids`` is stopped or gone.

    ``kill`` returns before SIGSTOP takes effect: a process running on another CPU, or in an
    uninterruptible wait, stops a moment later.
    """
    deadline = time.monotonic() + timeout
    waiting = list(pids)
    while waiting and time.monotonic() < deadline:
        waiting = [p for p in waiting if state(p) not in _STOPPED]
        if waiting:
            time.sleep(0.001)


def _stop_parent(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until it is stopped, so it cannot be in the middle of a fork.

    A parent inside ``fork`` finishes it before it stops, and its new child, created after
    the caller listed the tree, would escape the signal.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)
    _wait_stopped([pid])


def signal_tree(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to a server and every process it started (stopping the parent first).

    For SIGSTOP, returns once all of them are stopped: a hung node answers nothing from then on.
    """
    if sig == signal.SIGSTOP:
        # Only a stopped parent cannot add children while they are being stopped.
        _stop_parent(pid)
    members = tree(pid)
    for member in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(member, sig)
    if sig == signal.SIGSTOP:
        _wait_stopped(members)


def kill_tree(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL a server and everything it started; wait until all of it is gone."""
    _stop_parent(pid)  # no new children from here on
    members = set(tree(pid)) | set(group_members(pid))
    for member in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(member, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(m) for m in members):
            return
        time.sleep(0.01)
    raise TimeoutError(f"process {pid} and its children still alive {timeout:.0f}s after SIGKILL")


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` is gone (or a zombie); return whether it went."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.01)
    return not alive(pid)
