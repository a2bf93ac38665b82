"""Driver keyword arguments pass through to the driver connection, as docs/migration.md says.

PyMySQL: ``cursorclass``, ``conv``, ``ssl`` (a dict or an ``SSLContext``), ``auth_plugin_map``,
``compress``, the ``passwd``/``db`` aliases and ``defer_connect``. psycopg: ``row_factory``,
``cursor_factory``, ``context``. Values that are Python objects cannot be written in a DSN and
are keyword arguments only; TLS given as ``ssl={...}`` verifies exactly as PyMySQL would.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from psycopg.adapt import AdaptersMap, Loader
from psycopg.rows import dict_row
from pymysql import converters
from pymysql.constants import FIELD_TYPE
from pymysql.cursors import DictCursor

import aurora_smartdriver as asd
from aurora_smartdriver import dsn
from aurora_smartdriver import psycopg as asd_psycopg
from aurora_smartdriver import pymysql as asd_pymysql
from aurora_smartdriver.drivers import adapter_for
from aurora_smartdriver.errors import ConfigError
from aurora_smartdriver.lab import Lab, _tls

MYSQL = "mysql://app:pw@db.example.test/app"
POSTGRESQL = "postgresql://app:pw@db.example.test/app"


def _without(text: str, *names: str) -> str:
    """The DSN `text` without the given identity fields or driver parameters."""
    spec = dsn.parse(text)
    identity = {name: None for name in ("password", "database") if name in names}
    params = {k: v for k, v in spec.driver_params.items() if k not in names}
    return dataclasses.replace(spec, driver_params=params, **identity).to_dsn()  # type: ignore[arg-type]


def _open(module: Any, text: str, **kwargs: Any) -> Any:
    """`module.connect`, typed as the driver connection it stands for."""
    return module.connect(text, **kwargs)


def _tagged_ints() -> dict[Any, Any]:
    conv = dict(converters.conversions)
    for field_type in (FIELD_TYPE.LONG, FIELD_TYPE.LONGLONG):
        conv[field_type] = lambda text: f"int:{text}"
    return conv


# -- parsing ------------------------------------------------------------------------------------


def test_pymysql_db_and_passwd_are_aliases_of_database_and_password() -> None:
    spec = dsn.parse("mysql://app@db.example.test", passwd="pw", db="app")
    assert (spec.password, spec.database) == ("pw", "app")
    assert dsn.parse("mysql://app@db.example.test?db=app&passwd=pw") == dsn.parse(MYSQL)


def test_pymysql_python_valued_parameters_are_accepted_as_keywords() -> None:
    context = ssl.create_default_context()
    spec = dsn.parse(
        MYSQL,
        cursorclass=DictCursor,
        conv=_tagged_ints(),
        ssl={"ca": "/etc/ssl/ca.pem"},
        auth_plugin_map={},
        compress=False,
        defer_connect=True,
    )
    assert spec.driver_params["cursorclass"] is DictCursor
    assert spec.driver_params["ssl"] == {"ca": "/etc/ssl/ca.pem"}
    assert spec.driver_params["defer_connect"] is True
    assert dsn.parse(MYSQL, ssl=context).driver_params["ssl"] is context


def test_psycopg_python_valued_parameters_are_accepted_as_keywords() -> None:
    spec = dsn.parse(
        POSTGRESQL,
        row_factory=dict_row,
        cursor_factory=psycopg.ClientCursor,
        context=AdaptersMap(psycopg.adapters),
    )
    assert spec.driver_params["row_factory"] is dict_row
    assert spec.driver_params["cursor_factory"] is psycopg.ClientCursor


def test_python_valued_parameters_cannot_be_written_in_a_dsn() -> None:
    with pytest.raises(ConfigError) as caught:
        dsn.parse(MYSQL + "?cursorclass=DictCursor")
    assert caught.value.parameter == "cursorclass"
    assert "keyword argument" in str(caught.value)


def test_a_spec_with_dict_values_is_hashable_and_prints_without_secrets() -> None:
    spec = dsn.parse(MYSQL, ssl={"ca": "/ca.pem", "password": "hunter2"}, conv={})
    assert hash(spec) == hash(
        dsn.parse(MYSQL, ssl={"ca": "/ca.pem", "password": "hunter2"}, conv={})
    )
    assert "hunter2" not in repr(spec)
    with pytest.raises(ConfigError) as caught:
        spec.to_dsn()
    assert caught.value.parameter in ("ssl", "conv")


def test_wrong_kind_of_python_value_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        dsn.parse(MYSQL, cursorclass=42)
    assert caught.value.parameter == "cursorclass"


# -- PyMySQL on the lab -------------------------------------------------------------------------


@pytest.mark.mariadb
def test_pymysql_cursorclass_gives_dict_rows(aurora_lab_mariadb: Lab) -> None:
    with _open(asd_pymysql, aurora_lab_mariadb.dsn, cursorclass=DictCursor) as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1 AS one")
        assert cur.fetchone() == {"one": 1}


@pytest.mark.mariadb
def test_pymysql_cursorclass_reaches_pooled_connections(aurora_lab_mariadb: Lab) -> None:
    with asd.Cluster(aurora_lab_mariadb.dsn, cursorclass=DictCursor) as cluster:
        for _ in range(3):
            with cluster.writer() as conn:
                cur = conn.cursor()
                cur.execute("SELECT 2 AS two")
                assert cur.fetchone() == {"two": 2}


@pytest.mark.mariadb
def test_pymysql_conv_decodes_the_application_results(aurora_lab_mariadb: Lab) -> None:
    with _open(asd_pymysql, aurora_lab_mariadb.dsn, conv=_tagged_ints()) as conn:
        cur = conn.cursor()
        cur.execute("SELECT 7")
        assert cur.fetchone() == ("int:7",)


@pytest.mark.mariadb
def test_pymysql_conv_leaves_the_librarys_own_queries_alone(aurora_lab_mariadb: Lab) -> None:
    with asd.Cluster(aurora_lab_mariadb.dsn, conv=_tagged_ints()) as cluster:
        topology = cluster.topology
        assert topology is not None and topology.writer is not None
        assert topology.writer.instance_id == aurora_lab_mariadb.writer.id


@pytest.mark.mariadb
def test_pymysql_db_and_passwd_keywords_connect(aurora_lab_mariadb: Lab) -> None:
    spec = dsn.parse(aurora_lab_mariadb.dsn)
    text = _without(aurora_lab_mariadb.dsn, "password", "database")
    with _open(asd_pymysql, text, passwd=spec.password, db=spec.database) as conn:
        cur = conn.cursor()
        cur.execute("SELECT DATABASE()")
        assert cur.fetchone() == (spec.database,)


@pytest.mark.mariadb
def test_pymysql_auth_plugin_map_reaches_the_driver(aurora_lab_mariadb: Lab) -> None:
    plugins: dict[str, Any] = {"dialog": object}
    with _open(asd_pymysql, aurora_lab_mariadb.dsn, auth_plugin_map=plugins) as conn:
        assert conn._auth_plugin_map == plugins


@pytest.mark.mariadb
def test_pymysql_compress_off_is_accepted(aurora_lab_mariadb: Lab) -> None:
    with _open(asd_pymysql, aurora_lab_mariadb.dsn, compress=False) as conn:
        assert conn.open


def test_pymysql_compress_on_is_refused_up_front_as_the_driver_refuses_it() -> None:
    with pytest.raises(NotImplementedError):
        pymysql.connect(compress=True, defer_connect=True)
    with pytest.raises(ConfigError) as caught:
        dsn.parse(MYSQL, compress=True)
    assert caught.value.parameter == "compress"
    assert "not support" in str(caught.value)


@pytest.mark.mariadb
def test_pymysql_defer_connect_connects_at_connect(aurora_lab_mariadb: Lab) -> None:
    with _open(asd_pymysql, aurora_lab_mariadb.dsn, defer_connect=True) as conn:
        assert not conn.open  # as PyMySQL's: nothing connected until connect()
        conn.connect()
        cur = conn.cursor()
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


# -- PyMySQL TLS given as ssl={...} -----------------------------------------------------------


@pytest.fixture(scope="module")
def mariadb_tls_lab() -> Iterator[Lab]:
    lab = Lab.start("mariadb", replicas=1, name="sslkw", tls=True)
    try:
        yield lab
    finally:
        lab.down()


def _cipher(conn: Any) -> str:
    cur = conn.cursor()
    cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    row = cur.fetchone()
    return str(row[1]) if row else ""


@pytest.mark.mariadb
def test_pymysql_ssl_dict_with_the_ca_encrypts(mariadb_tls_lab: Lab) -> None:
    ca = mariadb_tls_lab.state().tls_ca
    text = _without(mariadb_tls_lab.dsn, "ssl_ca", "ssl_verify_identity")
    with _open(asd_pymysql, text, ssl={"ca": ca}) as conn:
        assert _cipher(conn)


@pytest.mark.mariadb
def test_pymysql_ssl_dict_with_a_foreign_ca_is_refused(
    mariadb_tls_lab: Lab, tmp_path: Path
) -> None:
    foreign = _tls.make_ca(tmp_path / "foreign-ca.pem", "not the lab's CA")
    text = _without(mariadb_tls_lab.dsn, "ssl_ca", "ssl_verify_identity")
    with pytest.raises(pymysql.OperationalError) as caught:
        asd_pymysql.connect(text, ssl={"ca": str(foreign)}, connect_timeout=5).close()
    assert "certificate verify failed" in str(caught.value)
    # A configuration to fix, raised at once: not a lost writer to wait failover_timeout for.
    assert adapter_for("mysql").error_kind(caught.value) == "other"


@pytest.mark.mariadb
def test_pymysql_ssl_context_verifies_the_instance_name(mariadb_tls_lab: Lab) -> None:
    ca = mariadb_tls_lab.state().tls_ca
    context = ssl.create_default_context(cafile=ca)
    text = _without(mariadb_tls_lab.dsn, "ssl_ca", "ssl_verify_identity")
    with _open(asd_pymysql, text, ssl=context) as conn:
        assert _cipher(conn)


# -- psycopg on the lab -------------------------------------------------------------------------


@pytest.mark.postgresql
def test_psycopg_row_factory_gives_dict_rows(aurora_lab_postgresql: Lab) -> None:
    with _open(asd_psycopg, aurora_lab_postgresql.dsn, row_factory=dict_row) as conn:
        assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}
        cur = conn.cursor()
        cur.execute("SELECT 2 AS two")
        assert cur.fetchone() == {"two": 2}


@pytest.mark.postgresql
def test_psycopg_row_factory_reaches_pooled_connections(aurora_lab_postgresql: Lab) -> None:
    with asd.Cluster(aurora_lab_postgresql.dsn, row_factory=dict_row) as cluster:
        for _ in range(3):
            with cluster.writer() as conn:
                assert conn.execute("SELECT 3 AS three").fetchone() == {"three": 3}


@pytest.mark.postgresql
def test_psycopg_cursor_factory_makes_the_cursors(aurora_lab_postgresql: Lab) -> None:
    with _open(asd_psycopg, aurora_lab_postgresql.dsn, cursor_factory=psycopg.ClientCursor) as conn:
        assert conn.cursor().mogrify("SELECT %s", [42]) == "SELECT 42"


class _TaggedIntLoader(Loader):
    def load(self, data: Any) -> str:
        return f"int:{bytes(data).decode()}"


@pytest.mark.postgresql
def test_psycopg_context_supplies_the_adapters(aurora_lab_postgresql: Lab) -> None:
    adapters = AdaptersMap(psycopg.adapters)
    adapters.register_loader("int4", _TaggedIntLoader)
    with _open(asd_psycopg, aurora_lab_postgresql.dsn, context=adapters) as conn:
        assert conn.execute("SELECT 5::int4").fetchone() == ("int:5",)


class _TaggedBoolLoader(Loader):
    def load(self, data: Any) -> str:
        return f"bool:{bytes(data).decode()}"


@pytest.mark.postgresql
def test_psycopg_context_leaves_the_librarys_own_queries_alone(
    aurora_lab_postgresql: Lab,
) -> None:
    adapters = AdaptersMap(psycopg.adapters)
    for name in ("bool", "int4", "int8", "float8", "numeric", "text"):
        adapters.register_loader(name, _TaggedIntLoader if name != "bool" else _TaggedBoolLoader)
    with asd.Cluster(aurora_lab_postgresql.dsn, context=adapters) as cluster:
        topology = cluster.topology
        assert topology is not None and topology.writer is not None
        assert topology.writer.instance_id == aurora_lab_postgresql.writer.id
        with cluster.writer() as conn:
            assert conn.execute("SELECT 5::int4").fetchone() == ("int:5",)


# -- after a failover ---------------------------------------------------------------------------


def _select_after_failover(lab: Lab, conn: Any, sql: str) -> Any:
    """Fail the lab over under `conn`, then the row `sql` gives on the new writer."""
    cur = conn.cursor()
    cur.execute(sql)
    cur.fetchall()
    lab.failover()
    for _ in range(2):
        try:
            cur = conn.cursor()
            cur.execute(sql)
            return cur.fetchone()
        except asd.FailoverSucceeded:
            continue
    raise AssertionError("no answer after the failover")


@pytest.mark.mariadb
def test_pymysql_cursorclass_holds_on_the_new_writer_after_a_failover(
    aurora_lab_mariadb: Lab,
) -> None:
    with _open(asd_pymysql, aurora_lab_mariadb.dsn, cursorclass=DictCursor) as conn:
        assert _select_after_failover(aurora_lab_mariadb, conn, "SELECT 1 AS one") == {"one": 1}


@pytest.mark.postgresql
def test_psycopg_row_factory_holds_on_the_new_writer_after_a_failover(
    aurora_lab_postgresql: Lab,
) -> None:
    with _open(asd_psycopg, aurora_lab_postgresql.dsn, row_factory=dict_row) as conn:
        conn.autocommit = True
        row = _select_after_failover(aurora_lab_postgresql, conn, "SELECT 1 AS one")
        assert row == {"one": 1}


# -- None that means something --------------------------------------------------------------------


def test_psycopg_prepare_threshold_none_is_kept_not_ignored() -> None:
    # psycopg's way to turn prepared statements off (PgBouncer in transaction mode).
    spec = dsn.parse(POSTGRESQL, prepare_threshold=None)
    assert "prepare_threshold" in spec.driver_params
    assert spec.driver_params["prepare_threshold"] is None
    assert dsn.parse(POSTGRESQL + "?prepare_threshold=none") == spec
    assert dsn.parse(spec.to_dsn()) == spec


def test_pymysql_server_public_key_passes_through() -> None:
    key = b"-----BEGIN PUBLIC KEY-----\nMIIB...\n-----END PUBLIC KEY-----\n"
    assert dsn.parse(MYSQL, server_public_key=key).driver_params["server_public_key"] == key


@pytest.mark.postgresql
def test_psycopg_prepare_threshold_none_reaches_the_driver(aurora_lab_postgresql: Lab) -> None:
    with _open(asd_psycopg, aurora_lab_postgresql.dsn, prepare_threshold=None) as conn:
        assert conn.prepare_threshold is None
        for _ in range(6):
            conn.execute("SELECT %s::int", [1])
        prepared = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
        assert prepared == (0,)
