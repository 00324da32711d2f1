"""Generated credentials of a cluster. Generated once, stored by the platform (a 0600 file
locally, a Secret on Kubernetes), never logged, never in run config or metadata."""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, SecretStr

from pg_ops.spec import ClusterSpec

SUPERUSER = "postgres"
REPLICATION_USER = "replicator"
# The role postgres_exporter logs in as: a member of PostgreSQL's predefined `pg_monitor` role
# (its statistics views and functions) with read access to pg_ops.status, never the superuser.
# Its own name cannot start with "pg_": PostgreSQL reserves those for predefined roles.
MONITORING_USER = "postgres_exporter"
MONITORING_GRANT = "pg_monitor"
POOLER_USER = "pgops_pooler"  # PgBouncer's auth_query and admin console login (operations/pooling.py)
PG_OPS_DATABASE = "pg_ops"
REDACTED = "[redacted]"
SECRET_KEY_MARKERS = ("password", "secret", "token", "passwd", "credential", "private_key")


def generate_password() -> str:
    # URL-safe alphabet: no ':' or '\\', so it is safe in a libpq passfile without escaping.
    return secrets.token_urlsafe(24)


class Credentials(BaseModel):
    model_config = ConfigDict(frozen=True)
    passwords: dict[str, SecretStr]

    def password(self, role: str) -> str:
        return self.passwords[role].get_secret_value()

    def with_roles(self, roles: list[str]) -> Credentials:
        missing = [r for r in roles if r not in self.passwords]
        if not missing:
            return self
        return Credentials(passwords={**self.passwords, **{r: SecretStr(generate_password()) for r in missing}})

    def rotated(self, role: str, password: str) -> Credentials:
        """The same credentials with `role`'s password replaced (rotate-password)."""
        return Credentials(passwords={**self.passwords, role: SecretStr(password)})

    def passfile_text(self, roles: list[str] | None = None) -> str:
        names = roles or sorted(self.passwords)
        return "".join(f"*:*:*:{r}:{self.password(r)}\n" for r in names)

    def as_plain_dict(self) -> dict[str, str]:
        return {r: s.get_secret_value() for r, s in self.passwords.items()}

    def __repr__(self) -> str:  # never print a password by accident
        return f"Credentials(roles={sorted(self.passwords)})"

    __str__ = __repr__


def required_roles(spec: ClusterSpec) -> list[str]:
    """pg_ops's own roles, then every application role whose password pg_ops generates."""
    return [SUPERUSER, REPLICATION_USER, MONITORING_USER] + ([POOLER_USER] if spec.pooler else []) \
        + spec.password_roles()


def new_credentials(spec: ClusterSpec) -> Credentials:
    return Credentials(passwords={}).with_roles(required_roles(spec))


def redact(value, secrets: Iterable[str]):
    """The one scrubber: `value` (text, or dicts and lists of them, as an alert's details) without
    any of the known secret values, and without the value of any secret-looking key. Values
    shorter than 4 characters are not secrets worth the false positives."""
    known = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
    return _redact(value, known)


def _redact(value, known: list[str]):
    if isinstance(value, dict):
        return {k: (REDACTED if any(m in str(k).lower() for m in SECRET_KEY_MARKERS) else _redact(v, known))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, known) for v in value]
    if isinstance(value, str):
        for secret in known:
            value = value.replace(secret, REDACTED)
        return value
    return value


# -- what an application gets: one role's credentials, as a file or Secret of these keys ---------
APP_CREDENTIAL_KEYS = ("username", "password", "host", "port", "dbname", "uri", "jdbc-uri")
READ_SUFFIX = "-read"


def pooled_uri(role: str, password: str, dbname: str, pooler) -> str:
    """The libpq URI of `role` through the cluster's pooler (an Endpoint: host, port)."""
    from urllib.parse import quote

    return f"postgresql://{quote(role, safe='')}:{quote(password, safe='')}@{pooler.host}:{pooler.port}/" \
           f"{quote(dbname, safe='')}"


def app_credentials(role: str, password: str, dbname: str, hosts: list[tuple[str, int]],
                    session_attrs: str | None, jdbc_target: str | None) -> dict[str, str]:
    """username, password, host, port, dbname, uri (libpq; several hosts with `session_attrs` as
    target_session_attrs) and jdbc-uri (pgJDBC; `jdbc_target` as targetServerType). `host` and
    `port` are comma-separated when there are several, as libpq takes them."""
    from urllib.parse import quote

    user, secret = quote(role, safe=""), quote(password, safe="")
    netloc = ",".join(f"{h}:{p}" for h, p in hosts)
    attrs = f"?target_session_attrs={session_attrs}" if session_attrs else ""
    jdbc_extra = f"&targetServerType={jdbc_target}" if jdbc_target else ""
    return {
        "username": role, "password": password,
        "host": ",".join(h for h, _ in hosts), "port": ",".join(str(p) for _, p in hosts), "dbname": dbname,
        "uri": f"postgresql://{user}:{secret}@{netloc}/{quote(dbname, safe='')}{attrs}",
        "jdbc-uri": f"jdbc:postgresql://{netloc}/{quote(dbname, safe='')}?user={user}&password={secret}{jdbc_extra}",
    }
