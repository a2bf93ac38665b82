"""Authentication with a credentials provider and with RDS IAM: python examples/iam_auth.py

What is real here, and what is not:

- Part 1 is real end to end: a TLS lab (PostgreSQL) and a credentials provider of the
  application's own (a stand-in for a vault) that hands out the password. The password is
  rotated in the database and in the "vault"; the pool's next connection is refused once, the
  provider is told, and the retry with the new password succeeds.
- Part 2 shows the IAM configuration (``auth=iam`` with ``sslmode=verify-full``) and the token
  the library generates for the *instance* host it connects to. Token generation is boto3's
  local signing, done here with made-up AWS credentials: no call goes to AWS. The lab cannot
  verify IAM signatures, so to log in with the token the example makes it the user's password
  on the lab: the login proves that the library sent that very token, for that host, over TLS
  verified against the host's name; it does not prove that RDS would accept it.
"""

from __future__ import annotations

import dataclasses
import os
import threading

import aurora_smartdriver as asd
from aurora_smartdriver import _runtime, auth, dsn, lab


class Vault:
    """The application's own secret store, as a `CredentialsProvider`: it hands out a cached
    password and re-reads its backend when told that a login failed."""

    def __init__(self, user: str, password: str) -> None:
        self._lock = threading.Lock()
        self.user = user
        self.backend = password  # what the vault server holds; rotation changes it
        self._cached = password
        self.refused = 0

    def get(self, host: str, port: int) -> auth.Credentials:
        with self._lock:
            return auth.Credentials(self.user, self._cached)

    def login_failed(self, host: str, port: int, credentials: auth.Credentials) -> None:
        with self._lock:
            self.refused += 1
            self._cached = self.backend  # a real client would fetch it from the server


def custom_provider(cluster: lab.Lab) -> None:
    vault = Vault("vault_app", "first-password")
    cluster.execute(cluster.writer, "CREATE ROLE vault_app LOGIN PASSWORD 'first-password'")
    try:
        text = dataclasses.replace(dsn.parse(cluster.dsn), user=None, password=None).to_dsn()
        with asd.Cluster(text, credentials=vault) as db:
            with db.writer() as conn:
                print("logged in as", conn.execute("SELECT current_user").fetchone())
            # Rotation: the vault's server and the database change; the cache is now stale.
            vault.backend = "second-password"
            cluster.execute(cluster.writer, "ALTER ROLE vault_app PASSWORD 'second-password'")
            # A new connection (same cluster, same provider): refused once, vault told, retried.
            conn = asd.connect(text, credentials=vault)
            print("after the rotation:", conn.execute("SELECT current_user").fetchone())
            conn.close()
            print("logins refused and reported to the vault:", vault.refused)
        # A wrong password: one clear error naming the user and the host, never the password.
        try:
            asd.connect(text, credentials=lambda: ("vault_app", "not-the-password"))
        except asd.AuthenticationFailed as exc:
            print("wrong password:", str(exc).split(": connection failed")[0])
    finally:
        _runtime.close_all()
        cluster.execute(cluster.writer, "DROP ROLE IF EXISTS vault_app")


def iam(cluster: lab.Lab) -> None:
    # Made-up AWS credentials: generate_db_auth_token signs locally and never calls AWS.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "example-secret-key")
    user, writer = "iam_app", cluster.writer
    cluster.execute(writer, f"CREATE ROLE {user} LOGIN")
    try:
        # The configuration an RDS user writes, here through the lab's TLS DSN (its CA file).
        # The region comes from the endpoint's name (`lab` in the lab, e.g. `us-east-1` on RDS).
        spec = dsn.parse(cluster.instance_dsn(writer), auth="iam")
        text = dataclasses.replace(spec, user=user, password=None).to_dsn()
        print("IAM DSN:", text.split("?")[0], "?auth=iam&sslmode=verify-full&sslrootcert=...")
        # The provider auth=iam makes, made here so that the token can become the lab
        # password *before* the cluster's first login (its monitor logs in at once, and a
        # refused token is replaced by a new one, signed a second later: a different token).
        region = auth.region_for(spec.settings.region, spec.hosts[0][0])
        provider = auth.IamTokenCredentials(user, region=region)
        token = provider.get(writer.host, writer.port).password or ""
        print("token for the instance host:", token.split("&X-Amz-Signature=")[0] + "&...")
        # Stand-in for RDS checking the signature: the token becomes the lab password.
        cluster.execute(writer, f"ALTER ROLE {user} PASSWORD '{token}'")
        with asd.Cluster(text, credentials=provider) as db, db.writer() as conn:
            row = conn.execute(
                "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ).fetchone()
            print("logged in with the token over verified TLS:", row)
        assert provider.generated == 1, "the cluster used the token it was given"
        # Without TLS verification IAM is refused before any connection is made.
        try:
            asd.connect(text.replace("sslmode=verify-full", "sslmode=require"))
        except asd.ConfigError as exc:
            print("without verify-full:", exc)
    finally:
        _runtime.close_all()
        cluster.execute(writer, f"DROP ROLE IF EXISTS {user}")


def main() -> None:
    with lab.start("postgresql", replicas=1, name="iamexample", tls=True) as cluster:
        custom_provider(cluster)
        iam(cluster)


if __name__ == "__main__":
    main()
