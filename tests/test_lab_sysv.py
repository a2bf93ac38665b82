"""The lab's clean-up of a killed PostgreSQL node's System V segment touches nothing else.

Segment ids are system-wide: a stale pid file could name one this machine's own PostgreSQL
(or another lab) holds. Only the segment exactly as the pid file names it (key, creator pid)
and with no process attached is removed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aurora_smartdriver.lab._engine import remove_sysv_segment

_IPC_PRIVATE, _IPC_CREAT, _IPC_RMID = 0, 0o1000, 0
_SHM_DEST = 0o1000

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]


def _listed(shmid: int) -> list[str] | None:
    """The segment's row in /proc/sysvipc/shm (None: gone)."""
    for row in Path("/proc/sysvipc/shm").read_text().splitlines()[1:]:
        fields = row.split()
        if fields[1] == str(shmid):
            return fields
    return None


def _destroyed(shmid: int) -> bool:
    fields = _listed(shmid)
    return fields is None or bool(int(fields[2], 8) & _SHM_DEST)


@pytest.fixture
def segment() -> Iterator[int]:
    if not Path("/proc/sysvipc/shm").exists():
        pytest.skip("no /proc/sysvipc/shm on this system")
    shmid = libc.shmget(_IPC_PRIVATE, 4096, _IPC_CREAT | 0o600)
    assert shmid >= 0, os.strerror(ctypes.get_errno())
    yield shmid
    libc.shmctl(shmid, _IPC_RMID, None)


def test_a_segment_someone_is_attached_to_is_left_alone(segment: int) -> None:
    address = libc.shmat(segment, None, 0)
    try:
        assert not remove_sysv_segment(segment, key=0, creator=os.getpid())
        assert not _destroyed(segment)
    finally:
        libc.shmdt(address)


def test_a_segment_of_another_creator_or_key_is_left_alone(segment: int) -> None:
    assert not remove_sysv_segment(segment, key=0, creator=os.getpid() + 1)
    assert not remove_sysv_segment(segment, key=12345, creator=os.getpid())
    assert not _destroyed(segment)


def test_the_segment_the_pid_file_names_is_removed_once_unattached(segment: int) -> None:
    assert remove_sysv_segment(segment, key=0, creator=os.getpid())
    assert _destroyed(segment)


def test_an_id_no_segment_has_is_nothing_to_remove() -> None:
    assert not remove_sysv_segment(2**31 - 2, key=0, creator=os.getpid())
