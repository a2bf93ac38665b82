"""What a process may share between connections to one cluster, decided from settings alone.

Pure functions over settings values, no I/O. One cluster's monitor, resolver and hung-host
watchdog serve every login; pools are shared only by connections that log in alike and want the
same pools; everything else (failover, retry_reads, role, routing, timeouts) stays with the
connection that asked for it. See `aurora_smartdriver._runtime`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Literal

from aurora_smartdriver.dsn import ConnectionSpec
from aurora_smartdriver.settings import Settings

__all__ = [
    "CLUSTER_SETTINGS",
    "POOL_SETTINGS",
    "Conflict",
    "conflicts",
    "login_key",
    "pool_key",
    "reuse",
]

CLUSTER_SETTINGS: tuple[str, ...] = (
    "topology_source",
    "refresh_interval",
    "fast_refresh_interval",
    "staleness_window",
    "instance_host_pattern",
    "replica_status_schema",
    "read_only_variable",
    "dns_server",
    "dns_timeout",
    "dns_ttl_cap",
    "failure_detection_time",
    "rds_proxy",
    "rds_proxy_read_only_endpoint",
)
"""Settings of the machinery one cluster shares whatever the login (monitor, resolver,
watchdog): the first user's values serve everyone while it is in use."""

POOL_SETTINGS: tuple[str, ...] = (
    "pool_min_size",
    "pool_max_size",
    "borrow_timeout",
    "max_lifetime",
    "max_lifetime_jitter",
    "max_idle",
    "validate_after_idle",
    "max_concurrent_connects",
    "backoff_initial",
    "backoff_max",
    "connect_timeout",
    "statement_timeout",
    "session_init",
    "resolve",
    "credentials_refresh_interval",
)
"""Settings a pooled connection carries from its opening (its session, its pool's policy):
connections share a pool only when they agree on every one."""


@dataclass(frozen=True, slots=True)
class Conflict:
    """A cluster-wide setting asked for with another value than the one in use."""

    name: str
    in_use: object
    asked: object

    def __str__(self) -> str:
        return f"{self.name}={_shown(self.in_use)} is in use, {_shown(self.asked)} was asked for"


def _shown(value: object) -> str:
    if isinstance(value, tuple) and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        return ",".join(f"{h}:{p}" for h, p in value)  # dns_server
    return "default" if value is None else str(value)


def conflicts(in_use: Settings, asked: Settings) -> tuple[Conflict, ...]:
    """The cluster-wide settings on which ``asked`` differs from ``in_use``.

    ``reader_strategy=fastest_response`` counts too when the shared monitor does not time
    responses (it starts its timer only when its own settings ask for that strategy).
    """
    found = [
        Conflict(name, getattr(in_use, name), getattr(asked, name))
        for name in CLUSTER_SETTINGS
        if getattr(in_use, name) != getattr(asked, name)
    ]
    if asked.reader_strategy == "fastest_response" != in_use.reader_strategy:
        found.append(Conflict("reader_strategy", in_use.reader_strategy, asked.reader_strategy))
    return tuple(found)


def reuse(
    *,
    users: int,
    answered: bool,
    conflicting: bool,
    failing: bool = False,
    other_login: bool = False,
) -> Literal["reuse", "replace", "restart"]:
    """Whether a cluster's shared machinery serves a new user as it is, is replaced, or has its
    monitor and resolver restarted with the newcomer's login and settings first.

    Replaced when no one uses it (it lingers after its last user) and either it never got an
    answer from the cluster (a failed first attempt must not fail a corrected DSN with the old
    error) or the newcomer wants other cluster-wide settings. In use, never answered and
    failing (a refused login, a name that does not resolve), it is restarted as the newcomer
    when the newcomer logs in otherwise or asks for other cluster-wide settings: one user's
    wrong password must not refuse everyone. Otherwise it is kept (a conflict is reported).
    """
    if users == 0 and (not answered or conflicting):
        return "replace"
    if not answered and failing and (other_login or conflicting):
        return "restart"
    return "reuse"


_SALT = os.urandom(16)


def _digest(text: str) -> str:
    return hashlib.sha256(_SALT + text.encode()).hexdigest()[:16]


def login_key(spec: ConnectionSpec, provider: object | None = None) -> str:
    """Who ``spec`` connects as: user, password, database, driver parameters, auth settings
    (a login's credentials provider is made once, from them), and ``provider`` (a
    credentials object given to ``connect``) by identity.

    Connections of different logins never share a pool: a second ``connect()`` with another
    (or a wrong) password must not get the first one's connections. The password enters only
    as a salted digest, so the key can be shown.
    """
    settings = spec.settings
    login = repr(
        (
            spec.user,
            spec.password,
            spec.database,
            spec.mariadb,
            sorted((name, repr(value)) for name, value in spec.driver_params.items()),
            settings.auth,
            settings.secret_id,
            settings.region,
            settings.credentials_refresh_interval,
        )
    )
    who = "" if provider is None else f"provider-{id(provider):x}"
    return f"{_digest(login)}{who}"


def pool_key(login: str, settings: Settings) -> tuple[str, str]:
    """The pools a connection of ``login`` with ``settings`` may share (see `POOL_SETTINGS`)."""
    return login, _digest(repr(tuple(getattr(settings, name) for name in POOL_SETTINGS)))
