"""Authentication: password, RDS IAM tokens, Secrets Manager and custom providers.

The pure decisions (token expiry, refresh due, rate limit, secret parsing, region) are checked
with hypothesis. IAM tokens are signed by botocore for real, with fake AWS credentials from the
environment (signing is local: nothing goes to AWS), and used as real passwords against a TLS
lab. Secrets Manager is moto's, scoped to each test with ``mock_aws``. Logins, refusals and
rotations happen against the lab's real servers, with a dedicated user per test so the lab's
own user is never touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws

import aurora_smartdriver as asd
from aurora_smartdriver import _runtime, auth, dsn
from aurora_smartdriver import psycopg as asd_psycopg
from aurora_smartdriver import pymysql as asd_pymysql
from aurora_smartdriver.auth import Credentials, CredentialsProvider
from aurora_smartdriver.errors import AuthenticationFailed, ConfigError
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.pool import Target

SECRET_REGION = "us-east-1"

# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Fake AWS credentials and no AWS configuration files: botocore signs with these."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTONLY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", SECRET_REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _no_lingering_runtimes() -> Iterator[None]:
    """Close the runtimes a test left (connect() lingers): none outlives its moto mock."""
    yield
    _runtime.close_all()


def _engine(lab: Lab) -> str:
    return lab.state().engine


def _query(conn: Any, sql: str) -> list[Any]:
    cur = conn.cursor()
    cur.execute(sql)
    return list(cur.fetchall()) if cur.description else []


def _current_user(conn: Any) -> str:
    [(user,)] = _query(conn, "SELECT current_user" if _is_pg(conn) else "SELECT current_user()")
    return str(user).split("@")[0]


def _is_pg(conn: Any) -> bool:
    return type(conn).__name__.startswith("Psycopg")


def _sql_text(value: str) -> str:
    assert "'" not in value and "\\" not in value
    return f"'{value}'"


class LabUser:
    """A login of its own on a lab's writer, dropped at the end (the lab's `app` is untouched)."""

    def __init__(self, lab: Lab, password: str) -> None:
        self.lab = lab
        self.name = f"asd_auth_{uuid.uuid4().hex[:10]}"
        self.password = password
        if _engine(lab) == "postgresql":
            self._run(f'CREATE ROLE "{self.name}" LOGIN PASSWORD {_sql_text(password)}')
            self._run(f'GRANT pg_monitor TO "{self.name}"')
        else:
            quoted = f"'{self.name}'@'%'"
            self._run(f"CREATE USER {quoted} IDENTIFIED BY {_sql_text(password)}")
            self._run(f"GRANT ALL PRIVILEGES ON *.* TO {quoted}")
            self._run(f"REVOKE READ_ONLY ADMIN, SUPER ON *.* FROM {quoted}")

    def _run(self, sql: str) -> None:
        self.lab.execute(self.lab.writer, sql)

    def set_password(self, password: str) -> None:
        self.password = password
        if _engine(self.lab) == "postgresql":
            self._run(f'ALTER ROLE "{self.name}" PASSWORD {_sql_text(password)}')
        else:
            self._run(f"ALTER USER '{self.name}'@'%' IDENTIFIED BY {_sql_text(password)}")

    def drop(self) -> None:
        if _engine(self.lab) == "postgresql":
            self._run(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE usename = '{self.name}'"
            )
            self._run(f'DROP ROLE IF EXISTS "{self.name}"')
        else:
            self._run(f"DROP USER IF EXISTS '{self.name}'@'%'")


@contextlib.contextmanager
def lab_user(lab: Lab, password: str | None = None) -> Iterator[LabUser]:
    user = LabUser(lab, password or secrets.token_urlsafe(16))
    try:
        yield user
    finally:
        _runtime.close_all()
        user.drop()


def _dsn_without_password(lab: Lab, user: str, **params: Any) -> str:
    """The lab's DSN for `user`, no password in it, with a cluster of its own."""
    spec = dataclasses.replace(dsn.parse(lab.dsn), user=user, password=None)
    return dsn.parse(spec.to_dsn(), cluster_id=uuid.uuid4().hex, **params).to_dsn()


class Recording:
    """A provider wrapper that records what it gave and which logins failed, per thread."""

    def __init__(self, inner: CredentialsProvider) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.given: list[tuple[str, int, Credentials]] = []
        self.failed: Counter[int] = Counter()
        self.failures: list[tuple[str, str]] = []  # (thread name, host) per refused login

    def get(self, host: str, port: int) -> Credentials:
        credentials = self.inner.get(host, port)
        with self.lock:
            self.given.append((host, port, credentials))
        return credentials

    def login_failed(self, host: str, port: int, credentials: Credentials) -> None:
        with self.lock:
            self.failed[threading.get_ident()] += 1
            self.failures.append((threading.current_thread().name, host))
        self.inner.login_failed(host, port, credentials)


# -- pure decisions ------------------------------------------------------------------------------

_moments = st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2099, 1, 1))


def _token(host: str, when: datetime, expires: int) -> str:
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    return (
        f"{host}:5432/?Action=connect&DBUser=u&X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Date={stamp}&X-Amz-Expires={expires}&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=abc"
    )


@given(_moments, st.integers(min_value=1, max_value=7 * 86400))
def test_token_expiry_is_its_date_plus_its_lifetime(when: datetime, expires: int) -> None:
    when = when.replace(microsecond=0, tzinfo=UTC)
    token = _token("db-1.abc.us-east-1.rds.amazonaws.com", when, expires)
    assert auth.token_expiry(token) == (when + timedelta(seconds=expires)).timestamp()


@given(st.text(max_size=60))
def test_token_expiry_of_anything_else_is_none_or_a_number(text: str) -> None:
    assert auth.token_expiry(text) is None or isinstance(auth.token_expiry(text), float)


_times = st.floats(min_value=0, max_value=1e9, allow_nan=False)


@given(_times, _times, st.floats(min_value=0, max_value=900), st.floats(0, 1e6))
def test_refresh_due_from_margin_before_expiry_on(
    now: float, expires_at: float, margin: float, later: float
) -> None:
    due = auth.refresh_due(now, expires_at, margin)
    assert due == (now >= expires_at - margin)
    if due:  # once due, due for ever after
        assert auth.refresh_due(now + later, expires_at, margin)


@given(
    st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), max_size=200),
    st.floats(min_value=0.001, max_value=100),
)
def test_forced_refreshes_are_at_least_an_interval_apart(
    failures: list[float], interval: float
) -> None:
    last: float | None = None
    done: list[float] = []
    for now in sorted(failures):
        if auth.may_refresh(now, last, interval):
            done.append(now)
            last = now
    assert all(b - a >= interval for a, b in itertools.pairwise(done))
    if failures:
        assert done[0] == min(failures)  # the first failure always refreshes
        span = max(failures) - min(failures)
        assert len(done) <= 1 + span / interval


@given(st.text(), st.text())
def test_a_secret_gives_its_username_and_password(user: str, password: str) -> None:
    text = json.dumps({"username": user, "password": password, "engine": "postgres"})
    assert auth.parse_secret(text) == Credentials(user, password)


@given(st.text(min_size=8))
def test_a_bad_secret_is_refused_without_showing_it(content: str) -> None:
    for text in (content, json.dumps([content]), json.dumps({"username": content})):
        with contextlib.suppress(ValueError):
            auth.parse_secret(text)
            continue
        try:
            auth.parse_secret(text)
        except ValueError as exc:
            assert content not in str(exc)


def test_a_secret_without_username_uses_the_dsn_user() -> None:
    assert auth.parse_secret('{"password": "p"}', default_user="app") == Credentials("app", "p")


_regions = st.from_regex(r"[a-z]{2}(-[a-z]+){1,2}-[1-9]", fullmatch=True)


@given(_regions, st.sampled_from(["cluster-", "cluster-ro-", ""]))
def test_the_region_comes_from_an_rds_endpoint(region: str, prefix: str) -> None:
    host = f"orders.{prefix}abc123.{region}.rds.amazonaws.com"
    assert auth.region_for(None, host) == region
    assert auth.region_for("eu-west-3", host) == "eu-west-3"


def test_no_region_for_another_name_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="region") as caught:
        auth.region_for(None, "db.internal.example.com")
    assert caught.value.parameter == "region"
    assert "region=us-east-1" in str(caught.value)


@given(st.text(min_size=1))
def test_credentials_never_show_their_password(password: str) -> None:
    credentials = Credentials("app", password)
    assert "***" in repr(credentials) and "***" in str(credentials)
    if password not in "Credentials(user='app', password='***')":
        assert password not in repr(credentials)
        assert password not in str(credentials)


def test_a_retry_only_with_other_credentials() -> None:
    assert not auth.should_retry(Credentials("a", "p"), Credentials("a", "p"))
    assert auth.should_retry(Credentials("a", "p"), Credentials("a", "q"))
    assert auth.should_retry(Credentials("a", "p"), Credentials("b", "p"))


# -- configuration -------------------------------------------------------------------------------

_RDS = "orders.cluster-abc123.us-east-1.rds.amazonaws.com"


@pytest.mark.parametrize(
    ("text", "parameter"),
    [
        (f"postgresql://app@{_RDS}/app?auth=iam", "sslmode"),
        (f"postgresql://app@{_RDS}/app?auth=iam&sslmode=require", "sslmode"),
        (f"postgresql://app@{_RDS}/app?auth=iam&sslmode=verify-ca", "sslmode"),
        (f"mysql://app@{_RDS}/app?auth=iam", "ssl_verify_identity"),
        (f"mysql://app@{_RDS}/app?auth=iam&ssl_verify_identity=on", "ssl_verify_identity"),
        (f"mysql://app@{_RDS}/app?auth=iam&ssl_ca=/ca.pem", "ssl_verify_identity"),
        (f"mysql://app@{_RDS}/app?auth=iam&ssl_ca=/ca.pem&ssl_verify_identity=off", None),
        (f"postgresql://app:pw@{_RDS}/app?auth=iam&sslmode=verify-full", "password"),
        (f"postgresql://{_RDS}/app?auth=iam&sslmode=verify-full", "user"),
        ("postgresql://app@db.example.com/app?auth=iam&sslmode=verify-full", "region"),
        ("postgresql://app@db.example.com/app?auth=secrets&secret_id=s", "region"),
        (f"postgresql://app:pw@{_RDS}/app?auth=secrets&secret_id=s", "password"),
    ],
)
def test_auth_settings_that_cannot_work_are_config_errors(text: str, parameter: str | None) -> None:
    with pytest.raises(ConfigError) as caught:
        auth.provider_for(dsn.parse(text))
    if parameter is not None:
        assert caught.value.parameter == parameter
    assert "pw" not in str(caught.value).replace("password", "")


def test_verified_tls_is_enough_for_iam(aws_env: None) -> None:
    for text in (
        f"postgresql://app@{_RDS}/app?auth=iam&sslmode=verify-full&sslrootcert=/ca.pem",
        f"mysql://app@{_RDS}/app?auth=iam&ssl_ca=/ca.pem&ssl_verify_identity=on",
    ):
        provider = auth.provider_for(dsn.parse(text))
        assert isinstance(provider, auth.IamTokenCredentials)
        assert provider.region == "us-east-1"


def test_connect_refuses_iam_without_tls_before_connecting() -> None:
    with pytest.raises(ConfigError, match="sslmode=verify-full"):
        asd.connect(f"postgresql://app@{_RDS}/app?auth=iam")


def test_credentials_must_be_a_provider_or_a_function() -> None:
    with pytest.raises(ConfigError, match="credentials"):
        auth.as_provider(("app", "pw"))  # type: ignore[arg-type]
    fn = auth.as_provider(lambda: ("app", "pw"))
    assert fn.get("h", 1) == Credentials("app", "pw")
    provider = auth.StaticCredentials("app", "pw")
    assert auth.as_provider(provider) is provider
    assert "pw" not in repr(provider) and "pw" not in repr(fn)


# -- IAM tokens (botocore's real signing, fake credentials) --------------------------------------

_INSTANCE = "orders-2.abc123.us-east-1.rds.amazonaws.com"


def test_an_iam_token_is_for_the_instance_host_port_and_user(aws_env: None) -> None:
    provider = auth.IamTokenCredentials("iam_app", region="us-east-1")
    before = time.time()
    credentials = provider.get(_INSTANCE, 5432)
    token = credentials.password
    assert credentials.user == "iam_app" and token is not None
    assert token.startswith(f"{_INSTANCE}:5432/?Action=connect&DBUser=iam_app&X-Amz-")
    for part in (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256",
        "X-Amz-Credential=AKIDTESTONLY%2F",
        "%2Fus-east-1%2Frds-db%2Faws4_request",
        "X-Amz-Expires=900",
        "X-Amz-SignedHeaders=host",
        "X-Amz-Signature=",
    ):
        assert part in token
    expiry = auth.token_expiry(token)
    assert expiry is not None and before - 1 <= expiry - 900 <= time.time() + 1
    assert token not in repr(credentials) and token not in repr(provider)


def test_iam_tokens_are_cached_per_host_and_renewed_before_expiry(aws_env: None) -> None:
    now = [time.time()]
    provider = auth.IamTokenCredentials("iam_app", region="us-east-1", clock=lambda: now[0])
    first = provider.get(_INSTANCE, 5432)
    assert provider.get(_INSTANCE, 5432) == first  # cached
    assert provider.generated == 1
    other = provider.get("orders-3.abc123.us-east-1.rds.amazonaws.com", 5432)
    assert other.password is not None and other.password.startswith("orders-3.")
    assert provider.generated == 2
    expiry = auth.token_expiry(first.password or "")
    assert expiry is not None
    now[0] = expiry - auth.IAM_REFRESH_MARGIN - 1  # just before the margin: still cached
    assert provider.get(_INSTANCE, 5432) == first
    assert provider.generated == 2
    now[0] = expiry - auth.IAM_REFRESH_MARGIN  # within the margin: a new one
    provider.get(_INSTANCE, 5432)
    assert provider.generated == 3


def test_a_refused_iam_token_is_regenerated(aws_env: None) -> None:
    provider = auth.IamTokenCredentials("iam_app", region="us-east-1")
    first = provider.get(_INSTANCE, 5432)
    provider.login_failed(_INSTANCE, 5432, Credentials("iam_app", "an older token"))
    assert provider.get(_INSTANCE, 5432) == first  # not the token in the cache: kept
    assert provider.generated == 1
    provider.login_failed(_INSTANCE, 5432, first)
    provider.get(_INSTANCE, 5432)
    assert provider.generated == 2


@pytest.fixture(scope="module", params=["postgresql", "mariadb"])
def tls_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A private TLS lab (IAM needs verified TLS): a writer alone."""
    lab = Lab.start(request.param, replicas=0, name="authtls", tls=True)
    try:
        yield lab
    finally:
        lab.down()


def test_an_iam_token_is_the_password_of_a_verified_tls_login_to_the_instance(
    tls_lab: Lab, aws_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    # The lab cannot check IAM signatures, so the user's password is set to the very token
    # the provider generates for the instance host: the login succeeds only if the library
    # passed that token, for that host, as the password.
    caplog.set_level(logging.DEBUG, logger="aurora_smartdriver")
    writer = tls_lab.writer
    with lab_user(tls_lab) as user:
        provider = Recording(auth.IamTokenCredentials(user.name, region="lab"))
        token = provider.inner.get(writer.host, writer.port).password
        assert token is not None and token.startswith(f"{writer.host}:{writer.port}/?Action=")
        user.set_password(token)
        spec = dsn.parse(tls_lab.instance_dsn(writer))
        text = dataclasses.replace(spec, user=user.name, password=None).to_dsn()
        assert "sslmode=verify-full" in text or "ssl_verify_identity=on" in text
        conn = asd.connect(text, auth="iam", credentials=provider)
        try:
            assert _current_user(conn) == user.name
            if _is_pg(conn):
                assert _query(conn, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            else:
                [(_, cipher)] = _query(conn, "SHOW SESSION STATUS LIKE 'Ssl_cipher'")
                assert cipher
        finally:
            conn.close()
        hosts = {(host, port) for host, port, _ in provider.given}
        assert hosts == {(writer.host, writer.port)}  # the instance's name, never an address
        assert {c.password for _, _, c in provider.given} == {token}
        assert not provider.failed
        # Built from the settings alone: auth=iam, the region from the endpoint's name. (Not
        # through a runtime: its monitor would log in at once with a token of its own, before
        # the password is set, and a token signed a second later is a different token.)
        own = auth.provider_for(dsn.parse(text, auth="iam"))
        assert isinstance(own, auth.IamTokenCredentials) and own.region == "lab"
        user.set_password(own.get(writer.host, writer.port).password or "")
        conn = asd.connect(text, auth="iam", credentials=own)
        try:
            assert _current_user(conn) == user.name
        finally:
            conn.close()
        assert own.generated == 1
        assert token not in caplog.text


def test_a_refused_iam_token_is_regenerated_once_then_a_clear_error(
    tls_lab: Lab, aws_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aurora_smartdriver")
    writer = tls_lab.writer
    with lab_user(tls_lab) as user:
        provider = Recording(auth.IamTokenCredentials(user.name, region="lab"))
        spec = dsn.parse(tls_lab.instance_dsn(writer))
        text = dataclasses.replace(spec, user=user.name, password=None).to_dsn()
        with pytest.raises(AuthenticationFailed) as caught:
            asd.connect(text, auth="iam", credentials=provider)
        error = caught.value
        assert error.user == user.name and error.host == writer.host
        assert user.name in str(error) and writer.host in str(error)
        tokens = {c.password for _, _, c in provider.given}
        # The monitor's first refresh and the one connect() waits for: each tries a token
        # and, if regenerating gave another one, that one.
        assert 1 <= sum(provider.failed.values()) <= 4
        assert len(provider.given) <= 4
        for token in tokens:
            assert token is not None
            assert token not in str(error) and token not in caplog.text
            assert token not in repr(error.__cause__)


# -- Secrets Manager (moto) ----------------------------------------------------------------------


@contextlib.contextmanager
def secret(user: str, password: str) -> Iterator[tuple[str, boto3.Session, Counter[str]]]:
    """A moto secret like an RDS-managed one; a session counting GetSecretValue calls."""
    with mock_aws():
        session = boto3.Session(region_name=SECRET_REGION)
        calls: Counter[str] = Counter()

        def count(**_: Any) -> None:
            calls["GetSecretValue"] += 1

        session.events.register("before-call.secrets-manager.GetSecretValue", count)
        client = session.client("secretsmanager")
        name = f"rds!cluster-{uuid.uuid4()}"
        client.create_secret(
            Name=name, SecretString=json.dumps({"username": user, "password": password})
        )
        yield name, session, calls


def _put(session: boto3.Session, name: str, user: str, password: str) -> None:
    session.client("secretsmanager").put_secret_value(
        SecretId=name, SecretString=json.dumps({"username": user, "password": password})
    )


def test_the_secret_is_read_once_and_cached(aws_env: None) -> None:
    with secret("app", "one") as (name, session, calls):
        provider = auth.SecretsManagerCredentials(name, region=SECRET_REGION, session=session)
        threads = [threading.Thread(target=provider.get, args=("h", 1)) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert provider.get("h", 1) == Credentials("app", "one")
        assert calls["GetSecretValue"] == provider.reads == 1


def test_refused_logins_reread_the_secret_once_per_interval(aws_env: None) -> None:
    now = [1000.0]
    with secret("app", "one") as (name, session, calls):
        provider = auth.SecretsManagerCredentials(
            name, region=SECRET_REGION, session=session, clock=lambda: now[0], refresh_interval=60
        )
        old = provider.get("h", 1)
        _put(session, name, "app", "two")
        barrier = threading.Barrier(20)

        def fail() -> None:
            barrier.wait()
            provider.login_failed("h", 1, old)

        threads = [threading.Thread(target=fail) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert provider.get("h", 1) == Credentials("app", "two")
        assert calls["GetSecretValue"] == 2  # first read, and one re-read for 20 failures
        _put(session, name, "app", "three")
        now[0] += 59
        provider.login_failed("h", 1, provider.get("h", 1))
        assert provider.get("h", 1) == Credentials("app", "two")  # rate limited
        now[0] += 1
        provider.login_failed("h", 1, provider.get("h", 1))
        assert provider.get("h", 1) == Credentials("app", "three")
        assert calls["GetSecretValue"] == provider.reads == 3


def test_a_login_refused_mid_rotation_takes_the_pending_version(
    aurora_lab: Lab, aws_env: None
) -> None:
    """AWS rotation sets the database password before it makes the new secret current."""
    with lab_user(aurora_lab) as user, secret(user.name, user.password) as (name, session, _):
        text = _dsn_without_password(aurora_lab, user.name)
        with asd.Cluster(
            text, auth="secrets", secret_id=name, region=SECRET_REGION, validate_after_idle=0
        ) as cluster:
            with cluster.writer() as conn:
                assert _current_user(conn) == user.name
            # createSecret: the new password as AWSPENDING; setSecret: the database takes it.
            pending = secrets.token_urlsafe(16)
            session.client("secretsmanager").put_secret_value(
                SecretId=name,
                SecretString=json.dumps({"username": user.name, "password": pending}),
                VersionStages=["AWSPENDING"],
            )
            user.set_password(pending)
            _retire_writer_pool(cluster, aurora_lab)
            with cluster.writer() as conn:  # refused once, then the pending version logs in
                assert _current_user(conn) == user.name
            provider = cluster._runtime.credentials
            assert isinstance(provider, auth.SecretsManagerCredentials)
            assert provider.reads == 3  # first read, the current version again, the pending one


def test_secrets_auth_from_the_dsn_logs_in(aurora_lab: Lab, aws_env: None) -> None:
    with lab_user(aurora_lab) as user, secret(user.name, user.password) as (name, _, _calls):
        text = _dsn_without_password(aurora_lab, user.name)
        with asd.Cluster(text, auth="secrets", secret_id=name, region=SECRET_REGION) as cluster:
            with cluster.writer() as conn:
                assert _current_user(conn) == user.name
            provider = cluster._runtime.credentials
            assert isinstance(provider, auth.SecretsManagerCredentials)
            assert provider.reads == 1
            assert user.password not in repr(cluster) and user.password not in repr(provider)


def test_an_unreadable_secret_is_an_authentication_error(aurora_lab: Lab, aws_env: None) -> None:
    with secret("app", "pw") as _:
        text = _dsn_without_password(aurora_lab, "app")
        with pytest.raises(AuthenticationFailed) as caught:
            asd.connect(text, auth="secrets", secret_id="no-such-secret", region=SECRET_REGION)
        assert "ResourceNotFoundException" in str(caught.value)
        assert isinstance(caught.value, _driver_error(aurora_lab))


def _driver_error(lab: Lab) -> type[Exception]:
    import psycopg
    import pymysql

    return psycopg.OperationalError if _engine(lab) == "postgresql" else pymysql.OperationalError


# -- password, custom providers, refusals --------------------------------------------------------


def test_a_wrong_password_is_a_clear_error_naming_user_and_host(
    aurora_lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aurora_smartdriver")
    with lab_user(aurora_lab) as user:
        good = _dsn_without_password(aurora_lab, user.name)
        conn = asd.connect(good, password=user.password)  # a runtime for the right password
        try:
            assert _current_user(conn) == user.name
            wrong = "Wr0ng-" + secrets.token_hex(8)
            for _ in range(2):  # the first connection's runtime must not lend itself
                with pytest.raises(AuthenticationFailed) as caught:
                    asd.connect(good, password=wrong)
                error = caught.value
                assert isinstance(error, _driver_error(aurora_lab))
                module = asd_psycopg if _engine(aurora_lab) == "postgresql" else asd_pymysql
                assert isinstance(error, module.AuthenticationFailed)  # the DB-API module's
                assert error.user == user.name
                assert user.name in str(error)
                # the host it was refused on: the cluster endpoint, or the writer instance when
                # the cluster's shared monitor already knows it
                assert aurora_lab.writer.host in str(error) or (
                    aurora_lab.state().cluster_endpoint in str(error)
                )
                assert wrong not in str(error) and wrong not in repr(error.__cause__)
        finally:
            conn.close()
        assert wrong not in caplog.text and user.password not in caplog.text


def test_a_custom_provider_is_asked_for_each_instance(aurora_lab: Lab) -> None:
    with lab_user(aurora_lab) as user:
        asked: list[tuple[str, int]] = []

        class Vault:
            def get(self, host: str, port: int) -> Credentials:
                asked.append((host, port))
                return Credentials(user.name, user.password)

            def login_failed(self, host: str, port: int, credentials: Credentials) -> None:
                raise AssertionError("no login fails here")

        text = _dsn_without_password(aurora_lab, "someone-else")
        with asd.Cluster(text, credentials=Vault()) as cluster, cluster.writer() as conn:
            assert _current_user(conn) == user.name
        writer = aurora_lab.writer
        assert (writer.host, writer.port) in asked
        fn_conn = asd.connect(text, credentials=lambda: (user.name, user.password))
        try:
            assert _current_user(fn_conn) == user.name
        finally:
            fn_conn.close()


def _borrow_all(cluster: asd.Cluster, threads: int, work: Callable[[Any], object]) -> list[Any]:
    """`threads` threads each borrow a writer connection and run `work` on it; their errors."""
    errors: list[Any] = [None] * threads
    barrier = threading.Barrier(threads)

    def run(i: int) -> None:
        barrier.wait()
        try:
            with cluster.writer() as conn:
                work(conn)
        except Exception as exc:
            errors[i] = exc

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=120)
    return errors


def _retire_writer_pool(cluster: asd.Cluster, lab: Lab) -> None:
    writer = lab.writer
    cluster._runtime.pools.pool(Target(writer.id, writer.host, writer.port)).retire()


def test_a_password_changed_under_the_pool_fails_without_a_storm(aurora_lab: Lab) -> None:
    # The database's password changes and the provider does not know: 20 threads needing new
    # connections each get one clear error, and the server sees a handful of failed logins.
    with lab_user(aurora_lab) as user:
        provider = Recording(auth.StaticCredentials(user.name, user.password))
        text = _dsn_without_password(aurora_lab, user.name, pool_max_size=20)
        with asd.Cluster(text, credentials=provider) as cluster:
            assert not any(_borrow_all(cluster, 20, _current_user))
            before = len(provider.given)
            user.set_password(secrets.token_urlsafe(16))
            _retire_writer_pool(cluster, aurora_lab)
            errors = _borrow_all(cluster, 20, _current_user)
            assert all(isinstance(e, AuthenticationFailed) for e in errors), errors
            assert all(user.name in str(e) for e in errors)
            refused = sum(provider.failed.values())
            cap = cluster.spec.settings.max_concurrent_connects
            assert 1 <= refused <= cap  # one refused login per admitted attempt, no retries
            assert len(provider.given) - before <= 2 * refused  # asked again once after each
            assert max(provider.failed.values()) <= 1


def test_rotation_through_secrets_manager_costs_each_thread_at_most_one_refusal(
    aurora_lab: Lab, aws_env: None
) -> None:
    with lab_user(aurora_lab) as user, secret(user.name, user.password) as (name, session, calls):
        inner = auth.SecretsManagerCredentials(name, region=SECRET_REGION, session=session)
        provider = Recording(inner)
        text = _dsn_without_password(aurora_lab, user.name, pool_max_size=20)
        with asd.Cluster(text, credentials=provider) as cluster:
            held = threading.Barrier(21)

            def hold(conn: Any) -> None:  # all 20 connected at once
                _current_user(conn)
                held.wait(timeout=60)
                held.wait(timeout=60)

            runner = threading.Thread(target=lambda: _borrow_all(cluster, 20, hold))
            runner.start()
            held.wait(timeout=60)
            assert cluster.stats()["pools"][aurora_lab.writer.id].in_use == 20
            # Rotate: the secret, then the database. (A rotation function changes the database
            # first; a login refused in between re-reads the unchanged secret and the next
            # re-read waits credentials_refresh_interval: see docs/authentication.md.)
            rotated = secrets.token_urlsafe(16)
            _put(session, name, user.name, rotated)
            user.set_password(rotated)
            _retire_writer_pool(cluster, aurora_lab)  # the 20 are closed when given back
            held.wait(timeout=60)
            runner.join(timeout=60)
            provider.failed.clear()
            seen: list[str] = []
            errors = _borrow_all(cluster, 20, lambda conn: seen.append(_current_user(conn)))
            assert errors == [None] * 20, provider.failures
            assert seen == [user.name] * 20
            per_thread = dict(provider.failed)
            assert max(per_thread.values(), default=0) <= 1
            assert calls["GetSecretValue"] == inner.reads <= 2
            print(
                f"\n{_engine(aurora_lab)}: refused logins per thread {sorted(per_thread.values())}"
                f", threads refused {len(per_thread)}, secret reads {calls['GetSecretValue']}"
            )
