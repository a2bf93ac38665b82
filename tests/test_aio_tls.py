"""TLS on the aiomysql path is never weaker than asked: a connection told to use TLS (any TLS
parameter) is refused by a server that offers none, as PyMySQL refuses it, rather than going on
in plain text (aiomysql's own behaviour: it upgrades only when the server offers TLS)."""

from __future__ import annotations

import ssl
import uuid

import pymysql
import pytest

import aurora_smartdriver.aio as aio
from aurora_smartdriver.lab import Lab

pytestmark = pytest.mark.asyncio


async def test_required_tls_is_refused_by_a_server_without_tls(aurora_lab_mariadb: Lab) -> None:
    lab = aurora_lab_mariadb
    assert lab.state().tls_ca is None  # the session lab serves no TLS
    cluster_id = uuid.uuid4().hex
    # A connection without TLS first: the shared monitor (sync PyMySQL, which refuses the
    # downgrade itself) then knows the topology, and the TLS one goes to aiomysql.
    plain = await aio.connect(lab.dsn, cluster_id=cluster_id)
    try:
        await _refused(lab, cluster_id)
    finally:
        await plain.ensure_closed()


async def _refused(lab: Lab, cluster_id: str) -> None:
    with pytest.raises(pymysql.err.OperationalError) as caught:
        conn = await aio.connect(
            lab.dsn,
            cluster_id=cluster_id,
            ssl_ca=ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt",
            connect_timeout="5s",
            failover_timeout="2s",
        )
        await conn.ensure_closed()  # reached only when it connected in plain text
    assert "TLS" in str(caught.value) or "SSL" in str(caught.value)
