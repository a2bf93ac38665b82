"""aws-advanced-python-wrapper beside the library, on the same lab (optional: only when installed).

The wrapper connects through psycopg (its PostgreSQL side) and resolves names with the
operating system's resolver, which does not know the lab's names. So
that it sees what it would see in a VPC, :func:`lab_names` makes this process resolve the lab's
names through the lab's DNS server (``socket.getaddrinfo`` for ``*.lab.aurora.test``; psycopg
resolves through it). Instance endpoints follow ``cluster_instance_host_pattern``, since the
lab's names are not RDS names the wrapper could derive a pattern from.

Not on MariaDB: the wrapper's MySQL side wraps mysql-connector-python, not PyMySQL. Tried by
hand against the lab's MariaDB (wrapper 3.1.0, mysql-connector-python 26.10.0): it connects,
detects the RDS Multi-AZ MySQL dialect (the lab's ``mysql.rds_topology``), and every topology
query of its monitor fails with mysql-connector's "Unread result found" while the monitor
reconnects in a tight loop; its Aurora MySQL dialect cannot work on MariaDB at all
(``information_schema.replica_host_status`` cannot be created there and ``@@aurora_server_id``
is no MariaDB variable). With no topology its failover has nowhere to go but the cluster
endpoint, so a MariaDB column would not measure the wrapper's failover.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import socket
from collections.abc import Iterator
from typing import Any

from aurora_smartdriver.lab import Lab

PACKAGE = "aws-advanced-python-wrapper"
LAB_DOMAIN = ".lab.aurora.test"


def version() -> str | None:
    """The installed wrapper's version, or None when it is not installed."""
    try:
        import aws_advanced_python_wrapper  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return None
    return importlib.metadata.version(PACKAGE)


@contextlib.contextmanager
def lab_names(lab: Lab) -> Iterator[None]:
    """Resolve the lab's names through its DNS server in this process, no caching."""
    import dns.resolver

    address, port = lab.dns
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.cache = [address], port, None
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(LAB_DOMAIN):
            host = str(resolver.resolve(host, "A")[0])
        return real(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.getaddrinfo = real


def connect(lab: Lab, **extra: Any) -> Any:
    """A wrapper connection through the cluster endpoint, default plugins (call inside
    :func:`lab_names`)."""
    import psycopg
    from aws_advanced_python_wrapper import AwsWrapperConnection

    state = lab.state()
    suffix = lab.writer.host.split(".", 1)[1]
    return AwsWrapperConnection.connect(
        psycopg.Connection.connect,
        host=state.cluster_endpoint,
        port=state.port,
        user=state.user,
        password=state.password,
        dbname=state.database,
        autocommit=True,
        cluster_instance_host_pattern=f"?.{suffix}",
        wrapper_dialect="aurora-pg",
        **extra,
    )


def default_plugins() -> str:
    from aws_advanced_python_wrapper.utils.properties import (  # type: ignore[import-untyped]
        WrapperProperties,
    )

    return str(WrapperProperties.DEFAULT_PLUGINS)


def release_resources() -> None:
    """Stop the wrapper's background threads (its monitors)."""
    with contextlib.suppress(Exception):
        from aws_advanced_python_wrapper import release_resources as release

        release()
