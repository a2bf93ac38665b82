"""Address allocation: each lab claims a /24 of loopback addresses and one shared port.

Several labs (and the machine's own database services on 127.0.0.1) must coexist. A lab claims
a subnet 127.<a>.<b>.0/24 by binding an abstract unix socket named after it: the kernel releases
the claim when the last process holding it exits, so a crashed lab never leaves a stale lock file.
"""

from __future__ import annotations

import contextlib
import errno
import random
import socket
from dataclasses import dataclass

_CLAIM_PREFIX = "aurora-smartdriver-lab/"
FIRST_NODE_HOST = 11  # node addresses are .11, .12, ... as in the design
DNS_HOST = 2
PROXY_FIRST_HOST = 101
RDS_PROXY_FIRST_HOST = 201  # the RDS Proxy imitation's endpoints (lab/_rds_proxy.py)


@dataclass(frozen=True, slots=True)
class Claim:
    """A claimed loopback /24 and the port the nodes share; ``lock`` holds the claim open."""

    prefix: str  # "127.a.b"
    port: int
    dns_port: int
    lock: socket.socket

    def address(self, host: int) -> str:
        return f"{self.prefix}.{host}"


def _can_bind(address: str, port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                return False
            raise
    return True


def _claim_lock(prefix: str) -> socket.socket | None:
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind("\0" + _CLAIM_PREFIX + prefix)
    except OSError:
        lock.close()
        return None
    return lock


def claimed(prefix: str) -> bool:
    """Whether some live process holds the claim on ``prefix``."""
    lock = _claim_lock(prefix)
    if lock is None:
        return True
    lock.close()
    return False


def claim(nodes: int, port: int, dns_port: int, *, attempts: int = 64) -> Claim:
    """Claim a free loopback /24 where ``nodes`` node addresses can listen on ``port``.

    ``port`` falls back to a free high port when the preferred one is taken on some address
    (for example a database service listening on 0.0.0.0).
    """
    rng = random.SystemRandom()
    for _ in range(attempts):
        prefix = f"127.{rng.randint(64, 254)}.{rng.randint(1, 254)}"
        lock = _claim_lock(prefix)
        if lock is None:
            continue
        hosts = [f"{prefix}.{FIRST_NODE_HOST + i}" for i in range(nodes + 8)]
        chosen = next(
            (
                p
                for p in (port, *range(port + 10000, port + 10050))
                if all(_can_bind(h, p, socket.SOCK_STREAM) for h in hosts)
            ),
            None,
        )
        dns_addr = f"{prefix}.{DNS_HOST}"
        dns_chosen = next(
            (
                p
                for p in (dns_port, *range(15353, 15400))
                if _can_bind(dns_addr, p, socket.SOCK_DGRAM)
                and _can_bind(dns_addr, p, socket.SOCK_STREAM)
            ),
            None,
        )
        if chosen is None or dns_chosen is None:
            with contextlib.suppress(OSError):
                lock.close()
            continue
        return Claim(prefix=prefix, port=chosen, dns_port=dns_chosen, lock=lock)
    raise RuntimeError("could not find a free loopback subnet for the lab")


def free_port(address: str) -> int:
    """A TCP port that is free on ``address`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])
