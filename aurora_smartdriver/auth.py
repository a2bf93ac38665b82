"""Where a connection's user and password come from: the DSN, an RDS IAM token, Secrets Manager,
or a provider of the application's own.

A `CredentialsProvider` gives the credentials for one instance (`get(host, port)`) and is told
when the server refused them (`login_failed`), so it can refresh them. Every connection the
library opens (pools, ``connect()``, the topology monitor, failover) goes through `connect`,
which asks the provider, connects, and after a refused login refreshes the credentials once
and tries once more, and only when the refresh gave different credentials; then it fails with
`AuthenticationFailed` naming the user and the host, never the password. The pool backs off for
its longest delay after that, so wrong credentials never become a storm of failed logins.

Providers:

- `StaticCredentials` (``auth=password``): the DSN's user and password.
- `IamTokenCredentials` (``auth=iam``): an RDS IAM token generated with boto3 (local signing,
  no network call) for the instance host being connected to, cached per (host, port, user,
  region) until `IAM_REFRESH_MARGIN` seconds before it expires, regenerated after a refused
  login. IAM needs TLS that verifies the server's name (`require_verified_tls`).
- `SecretsManagerCredentials` (``auth=secrets``): username and password from an AWS Secrets
  Manager secret (JSON, as RDS-managed secrets are), cached; after a refused login it is read
  again, by one thread while the others wait for it, and at most once per
  ``credentials_refresh_interval``.
- `CallableCredentials`: a plain function returning ``(user, password)``, called for every
  connection attempt (and again after a refused login).

The decisions (token expiry, refresh due, rate limit, secret parsing, region) are pure
functions over values, tested with hypothesis; the providers only hold the cache and a lock.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import parse_qs

from aurora_smartdriver.endpoints import parse_rds_host
from aurora_smartdriver.errors import AuthenticationFailed, ConfigError

if TYPE_CHECKING:
    from aurora_smartdriver.drivers import DriverAdapter
    from aurora_smartdriver.dsn import ConnectionSpec

__all__ = [
    "IAM_REFRESH_MARGIN",
    "IAM_TOKEN_LIFETIME",
    "CallableCredentials",
    "Credentials",
    "CredentialsProvider",
    "CredentialsSource",
    "IamTokenCredentials",
    "SecretsManagerCredentials",
    "StaticCredentials",
    "as_provider",
    "connect",
    "may_refresh",
    "parse_secret",
    "provider_for",
    "provider_from",
    "refresh_due",
    "region_for",
    "require_verified_tls",
    "should_retry",
    "token_expiry",
]

log = logging.getLogger("aurora_smartdriver.auth")

IAM_TOKEN_LIFETIME = 900.0
"""Seconds an RDS IAM token is valid (fixed by RDS: 15 minutes)."""
IAM_REFRESH_MARGIN = 120.0
"""A cached IAM token is replaced this many seconds before it expires."""
_MASK = "***"


# -- values --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name and password; the password never shows in `repr` or `str`."""

    user: str | None
    password: str | None = field(repr=False)

    def __repr__(self) -> str:
        shown = None if self.password is None else _MASK
        return f"Credentials(user={self.user!r}, password={shown!r})"

    __str__ = __repr__


@runtime_checkable
class CredentialsProvider(Protocol):
    """Where the credentials of a connection come from (see the module's documentation).

    Implementations must be thread-safe: pools call them from many threads at once.
    """

    def get(self, host: str, port: int) -> Credentials:
        """The credentials for connecting to the instance `host:port` (its host name, as the
        library connects to it). Raise to refuse: the connection attempt fails with
        `AuthenticationFailed` and the error as its cause."""
        ...

    def login_failed(self, host: str, port: int, credentials: Credentials) -> None:
        """The server at `host:port` refused `credentials` (as given by `get`).

        Refresh them if that can help; the library calls `get` once more and retries once
        when it returns other credentials. Called by every connection that failed, possibly
        at the same time: a provider doing I/O to refresh should do it once for all of them.
        """
        ...


CredentialsSource = CredentialsProvider | Callable[[], tuple[str | None, str | None]]
"""What ``connect(..., credentials=...)`` and ``Cluster(..., credentials=...)`` accept: a
`CredentialsProvider`, or a function returning ``(user, password)``."""


# -- pure decisions ------------------------------------------------------------------------------


def token_expiry(token: str) -> float | None:
    """When the RDS IAM `token` expires, as a Unix time, from its X-Amz-Date and X-Amz-Expires;
    None when the token does not say."""
    query = parse_qs(token.partition("?")[2])
    dates, expires = query.get("X-Amz-Date"), query.get("X-Amz-Expires")
    if not dates or not expires:
        return None
    try:
        signed = datetime.strptime(dates[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        return signed.timestamp() + float(int(expires[0]))
    except ValueError:
        return None


def refresh_due(now: float, expires_at: float, margin: float = IAM_REFRESH_MARGIN) -> bool:
    """Whether a token expiring at `expires_at` must be replaced at `now` (same clock)."""
    return now >= expires_at - margin


def may_refresh(now: float, last_refresh: float | None, interval: float) -> bool:
    """Whether a refresh forced by a refused login may happen at `now`, the last one having
    happened at `last_refresh` (None: never): at most one per `interval` seconds."""
    return last_refresh is None or now - last_refresh >= interval


def should_retry(used: Credentials, fresh: Credentials) -> bool:
    """Whether to try a refused login again: only with credentials the refresh changed."""
    return fresh != used


def parse_secret(text: str, *, default_user: str | None = None) -> Credentials:
    """The credentials in a Secrets Manager secret's string: JSON with "password" and
    "username" (RDS-managed secrets have both; without a username, `default_user`).

    Raises ValueError saying what is missing, never showing the secret's content.
    """
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError("the secret is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the secret is not a JSON object")
    password = data.get("password")
    if not isinstance(password, str):
        raise ValueError('the secret has no "password" string')
    user = data.get("username", default_user)
    if user is not None and not isinstance(user, str):
        raise ValueError('the secret\'s "username" is not a string')
    return Credentials(user, password)


def region_for(region: str | None, host: str) -> str:
    """The AWS region: the `region` setting when given, else the one in the RDS endpoint `host`
    (``*.us-east-1.rds.amazonaws.com``); a `ConfigError` when neither says."""
    if region:
        return region
    parsed = parse_rds_host(host)
    if parsed is not None and parsed.region:
        return parsed.region
    raise ConfigError(
        f"no AWS region for {host}: it is not an RDS endpoint name",
        parameter="region",
        suggestion="set region, e.g. region=us-east-1",
    )


def require_verified_tls(spec: ConnectionSpec) -> None:
    """Raise `ConfigError` unless `spec` makes the driver use TLS and verify the server's name.

    IAM tokens must only travel over TLS verified against the instance's host name
    (PostgreSQL ``sslmode=verify-full``; MySQL ``ssl_ca`` and ``ssl_verify_identity=on``,
    since PyMySQL checks the name only with a CA given).
    """
    params = spec.driver_params
    if spec.engine == "postgresql":
        if str(params.get("sslmode", "")).lower() != "verify-full":
            raise ConfigError(
                "auth=iam needs TLS verifying the server's name: sslmode is "
                f"{params.get('sslmode', 'unset')!s}",
                parameter="sslmode",
                value=str(params.get("sslmode", "")),
                suggestion="add sslmode=verify-full and sslrootcert=<the RDS CA bundle>",
            )
        return
    disabled = params.get("ssl_disabled") is True
    if disabled or params.get("ssl_verify_identity") is not True or not params.get("ssl_ca"):
        raise ConfigError(
            "auth=iam needs TLS verifying the server's name"
            + (": ssl_disabled is on" if disabled else ""),
            parameter="ssl_verify_identity",
            suggestion="add ssl_ca=<the RDS CA bundle> and ssl_verify_identity=on",
        )


# -- providers -----------------------------------------------------------------------------------


class StaticCredentials:
    """Fixed credentials (``auth=password``: the DSN's user and password)."""

    __slots__ = ("_credentials",)

    def __init__(self, user: str | None, password: str | None) -> None:
        self._credentials = Credentials(user, password)

    def get(self, host: str, port: int) -> Credentials:
        return self._credentials

    def login_failed(self, host: str, port: int, credentials: Credentials) -> None:
        """Nothing to refresh: the same password would be refused again."""

    def __repr__(self) -> str:
        return f"StaticCredentials(user={self._credentials.user!r})"


class CallableCredentials:
    """A function returning ``(user, password)``, called for every connection attempt.

    After a refused login it is simply called again: a function that reads a vault picks up a
    rotated password there. It should cache what it reads itself.
    """

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[], tuple[str | None, str | None]]) -> None:
        self._fn = fn

    def get(self, host: str, port: int) -> Credentials:
        user, password = self._fn()
        return Credentials(user, password)

    def login_failed(self, host: str, port: int, credentials: Credentials) -> None:
        """Nothing to do: `get` calls the function again."""

    def __repr__(self) -> str:
        return f"CallableCredentials({getattr(self._fn, '__qualname__', type(self._fn).__name__)})"


def _boto3() -> Any:
    try:
        import boto3
    except ImportError as exc:
        raise ConfigError(
            f"auth=iam and auth=secrets need boto3, which cannot be imported ({exc})",
            parameter="auth",
            suggestion="install it with `pip install 'aurora-smartdriver[aws]'`",
        ) from exc
    return boto3


@dataclass(slots=True)
class _Token:
    token: str
    expires_at: float


class IamTokenCredentials:
    """RDS IAM tokens for `user`, one per instance host, cached until shortly before expiry.

    `session` is the boto3 session whose credentials sign the tokens (default: a new
    ``boto3.Session()``, i.e. the environment, config files, instance role...). `clock` is the
    wall clock (tokens expire in wall-clock time). Generating a token is local signing: no
    network call unless boto3 must fetch the AWS credentials themselves.
    """

    def __init__(
        self,
        user: str,
        *,
        region: str,
        session: Any = None,
        margin: float = IAM_REFRESH_MARGIN,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.user = user
        self.region = region
        self._session = session
        self._margin = margin
        self._clock = clock
        self._client: Any = None
        self._tokens: dict[tuple[str, int, str, str], _Token] = {}
        self._lock = threading.Lock()
        self.generated = 0
        """Tokens generated so far."""

    def _rds(self) -> Any:
        if self._client is None:
            session = self._session if self._session is not None else _boto3().Session()
            self._client = session.client("rds", region_name=self.region)
        return self._client

    def get(self, host: str, port: int) -> Credentials:
        key = (host, port, self.user, self.region)
        with self._lock:  # token generation is fast (local signing): one at a time is fine
            cached = self._tokens.get(key)
            if cached is None or refresh_due(self._clock(), cached.expires_at, self._margin):
                now = self._clock()
                token = self._rds().generate_db_auth_token(
                    DBHostname=host, Port=port, DBUsername=self.user, Region=self.region
                )
                expires = token_expiry(token)
                cached = _Token(token, expires if expires is not None else now + IAM_TOKEN_LIFETIME)
                self._tokens[key] = cached
                self.generated += 1
            return Credentials(self.user, cached.token)

    def login_failed(self, host: str, port: int, credentials: Credentials) -> None:
        """Forget the refused token (unless already replaced): the next `get` makes another."""
        key = (host, port, self.user, self.region)
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and cached.token == credentials.password:
                del self._tokens[key]

    def __repr__(self) -> str:
        return f"IamTokenCredentials(user={self.user!r}, region={self.region!r})"


class SecretsManagerCredentials:
    """User and password from the Secrets Manager secret `secret_id`, cached until refused.

    The secret is read on first use (one thread reads, the others wait), and again after a
    refused login with the current credentials: one thread reads while the others wait and
    then use what it read, and such re-reads happen at most once per `refresh_interval`
    seconds, however many logins fail. When the current version is the one just refused, the
    AWSPENDING version is tried (a rotation in progress). `reads` counts the reads.
    """

    def __init__(
        self,
        secret_id: str,
        *,
        region: str,
        refresh_interval: float = 60.0,
        default_user: str | None = None,
        session: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.secret_id = secret_id
        self.region = region
        self.refresh_interval = refresh_interval
        self._default_user = default_user
        self._session = session
        self._clock = clock
        self._client: Any = None
        self._cached: Credentials | None = None
        self._last_forced: float | None = None
        self._lock = threading.Lock()  # guards the fields above
        self._reading = threading.Lock()  # held while reading the secret: single flight
        self.reads = 0
        """Times the secret was read from Secrets Manager."""

    def _read(self, stage: str = "AWSCURRENT") -> Credentials:
        """Read the secret's version in `stage` (the caller holds `_reading`)."""
        if self._client is None:
            session = self._session if self._session is not None else _boto3().Session()
            self._client = session.client("secretsmanager", region_name=self.region)
        with self._lock:
            self.reads += 1
        answer = self._client.get_secret_value(SecretId=self.secret_id, VersionStage=stage)
        text = answer.get("SecretString")
        if not isinstance(text, str):
            raise ValueError(f"the secret {self.secret_id} has no SecretString")
        try:
            return parse_secret(text, default_user=self._default_user)
        except ValueError as exc:
            raise ValueError(f"the secret {self.secret_id}: {exc}") from None

    def get(self, host: str, port: int) -> Credentials:
        cached = self._cached
        if cached is not None:
            return cached
        with self._reading:
            if self._cached is None:
                fresh = self._read()
                with self._lock:
                    self._cached = fresh
            return self._cached

    def login_failed(self, host: str, port: int, credentials: Credentials) -> None:
        """Read the secret again, unless it was already re-read since `credentials` were
        given, or was re-read less than `refresh_interval` seconds ago."""
        with self._reading:
            with self._lock:
                if self._cached != credentials:
                    return  # someone re-read it meanwhile: use that
                if not may_refresh(self._clock(), self._last_forced, self.refresh_interval):
                    log.info(
                        "secret %s re-read less than %gs ago; not reading it again yet",
                        self.secret_id,
                        self.refresh_interval,
                    )
                    return
                self._last_forced = self._clock()
            fresh = self._read()
            if fresh == credentials:
                fresh = self._pending() or fresh
            with self._lock:
                self._cached = fresh
            log.info("secret %s re-read after a refused login", self.secret_id)

    def _pending(self) -> Credentials | None:
        """The AWSPENDING version, if there is one.

        A rotation sets the new password in the database before it makes it AWSCURRENT; a
        login refused in between finds the current version unchanged, and the pending one is
        what the database now wants.
        """
        try:
            return self._read("AWSPENDING")
        except Exception as exc:  # no version in that stage: ResourceNotFoundException
            log.debug("secret %s has no AWSPENDING version: %s", self.secret_id, type(exc).__name__)
            return None

    def __repr__(self) -> str:
        return f"SecretsManagerCredentials({self.secret_id!r}, region={self.region!r})"


# -- choosing a provider -------------------------------------------------------------------------


def as_provider(source: CredentialsSource) -> CredentialsProvider:
    """`source` as a `CredentialsProvider`: itself, or a function wrapped."""
    if isinstance(source, CredentialsProvider):
        return source
    if callable(source):
        return CallableCredentials(source)
    raise ConfigError(
        f"credentials must be a CredentialsProvider or a function returning (user, password), "
        f"not {type(source).__name__}",
        parameter="credentials",
    )


def provider_for(spec: ConnectionSpec) -> CredentialsProvider:
    """The provider the `auth` setting of `spec` asks for; `ConfigError` when it cannot work."""
    settings = spec.settings
    if settings.auth == "password":
        return StaticCredentials(spec.user, spec.password)
    if spec.password is not None:
        raise ConfigError(
            f"a password is given but auth={settings.auth} does not use it",
            parameter="password",
            value=_MASK,
            suggestion="remove the password from the DSN",
        )
    region = region_for(settings.region, spec.hosts[0][0])
    if settings.auth == "iam":
        if not spec.user:
            raise ConfigError(
                "auth=iam needs a user", parameter="user", suggestion="give the database user"
            )
        require_verified_tls(spec)
        _boto3()
        return IamTokenCredentials(spec.user, region=region)
    assert settings.secret_id is not None  # Settings checks it
    _boto3()
    return SecretsManagerCredentials(
        settings.secret_id,
        region=region,
        refresh_interval=settings.credentials_refresh_interval,
        default_user=spec.user,
    )


def provider_from(
    spec: ConnectionSpec, credentials: CredentialsSource | None = None
) -> CredentialsProvider:
    """The provider for `spec`: `credentials` when given (see `as_provider`), else the one its
    `auth` setting asks for (`provider_for`).

    Given credentials replace the DSN's user and password, so they cannot go with
    ``auth=secrets``; with ``auth=iam``, or an `IamTokenCredentials` of your own, the DSN must
    still ask for verified TLS.
    """
    if credentials is None:
        return provider_for(spec)
    provider = as_provider(credentials)
    if spec.settings.auth == "secrets":
        raise ConfigError(
            "credentials= replaces auth=secrets",
            parameter="auth",
            suggestion="give either credentials= or auth=secrets, not both",
        )
    if spec.settings.auth == "iam" or isinstance(provider, IamTokenCredentials):
        require_verified_tls(spec)
    return provider


# -- connecting ----------------------------------------------------------------------------------


def _failure(
    error: type[AuthenticationFailed],
    why: str,
    credentials: Credentials | None,
    host: str,
    port: int,
    *,
    refreshed: bool = False,
) -> AuthenticationFailed:
    text = " ".join(why.split())
    if credentials is not None and credentials.password:
        text = text.replace(credentials.password, _MASK)
    user = credentials.user if credentials is not None else None
    after = " (also after refreshing the credentials)" if refreshed else ""
    return error(
        f"authentication failed for user {user!r} on {host}:{port}{after}: {text}",
        user=user,
        host=host,
        port=port,
    )


def _get(
    provider: CredentialsProvider, host: str, port: int, error: type[AuthenticationFailed]
) -> Credentials:
    try:
        return provider.get(host, port)
    except (ConfigError, AuthenticationFailed):
        raise
    except Exception as exc:
        raise error(
            f"no credentials for {host}:{port} from {provider!r}: {type(exc).__name__}: {exc}",
            host=host,
            port=port,
        ) from exc


def _report(
    provider: CredentialsProvider,
    host: str,
    port: int,
    used: Credentials,
    error: type[AuthenticationFailed],
) -> None:
    try:
        provider.login_failed(host, port, used)
    except (ConfigError, AuthenticationFailed):
        raise
    except Exception as exc:
        raise error(
            f"refreshing the credentials for {host}:{port} from {provider!r} failed: "
            f"{type(exc).__name__}: {exc}",
            user=used.user,
            host=host,
            port=port,
        ) from exc


def connect(
    adapter: DriverAdapter,
    provider: CredentialsProvider,
    spec: ConnectionSpec,
    host: str,
    port: int,
    *,
    address: str | None,
    timeout: float,
    autocommit: bool = True,
    error: type[AuthenticationFailed] = AuthenticationFailed,
) -> Any:
    """`adapter.connect` with the credentials of `provider` for `host:port`.

    A refused login is reported to the provider; if it then gives other credentials the
    login is tried once more within what is left of `timeout`. A login still refused raises
    `error` (`AuthenticationFailed`, or the driver's subclass of it) naming the user and the
    host, with the driver's error as its cause; the password never appears in it.
    """
    deadline = time.monotonic() + timeout
    used = _get(provider, host, port, error)
    overrides = {"user": used.user, "password": used.password}
    try:
        return adapter.connect(
            spec, host, port, address=address, timeout=timeout, autocommit=autocommit, **overrides
        )
    except adapter.Error as exc:
        if adapter.error_kind(exc) != "auth":
            raise
        first: Exception = exc
    _report(provider, host, port, used, error)
    fresh = _get(provider, host, port, error)
    left = deadline - time.monotonic()
    if not should_retry(used, fresh) or left <= 0:
        raise _failure(error, str(first), used, host, port) from first
    log.info("login as %r on %s refused; retrying with refreshed credentials", used.user, host)
    overrides = {"user": fresh.user, "password": fresh.password}
    try:
        return adapter.connect(
            spec, host, port, address=address, timeout=left, autocommit=autocommit, **overrides
        )
    except adapter.Error as exc:
        if adapter.error_kind(exc) != "auth":
            raise
        _report(provider, host, port, fresh, error)
        raise _failure(error, str(exc), fresh, host, port, refreshed=True) from exc
