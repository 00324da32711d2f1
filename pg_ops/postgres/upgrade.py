"""PostgreSQL's side of a major-version upgrade: which pairs pg_ops upgrades, the initdb that
makes a new cluster pg_upgrade accepts, pg_upgrade's command lines and what its failures say,
and the extensions to update afterwards. No process is started here (platforms/ runs them)."""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql

from pg_ops.errors import PgOpsError

# The majors pg_ops runs (spec postgres.version); an upgrade goes from one to a newer one.
SUPPORTED_MAJORS = (16, 17, 18)


class UpgradeRefused(PgOpsError):
    """An upgrade pg_ops will not try: said before anything starts."""


class UpgradeFailed(PgOpsError):
    """pg_upgrade (or a step around it) failed; the message is its own reason."""


def check_pair(cluster: str, from_major: int, to_major: int) -> None:
    """One line when `from_major` -> `to_major` is no upgrade pg_ops does."""
    if to_major == from_major:
        raise UpgradeRefused(f"cluster {cluster} already runs PostgreSQL {from_major}: nothing to upgrade to")
    if to_major < from_major:
        raise UpgradeRefused(f"cluster {cluster} runs PostgreSQL {from_major}: a downgrade to {to_major} is not "
                             f"possible (pg_upgrade only goes forward; restore a dump into a {to_major} cluster)")
    for major in (from_major, to_major):
        if major not in SUPPORTED_MAJORS:
            raise UpgradeRefused(f"cluster {cluster}: PostgreSQL {major} is not one pg_ops runs "
                                 f"({', '.join(map(str, SUPPORTED_MAJORS))})")


def server_major(conn: psycopg.Connection) -> int:
    return conn.info.server_version // 10000


TEMPLATE_SQL = """
select pg_encoding_to_char(encoding), datcollate, datctype, datlocprovider::text, current_setting('data_checksums')
from pg_database where datname = 'template0'
"""


def initdb_options(conn: psycopg.Connection) -> list[str]:
    """initdb options giving a new cluster what pg_upgrade requires of it: the old template0's
    encoding and locale, and the old data checksums setting (18 turns them on by default). Read
    from the running old server, so the new cluster is made before the downtime window. ICU and
    builtin locale providers are refused in one line (their locale options are not carried yet)."""
    row = conn.execute(TEMPLATE_SQL).fetchone()
    assert row is not None  # template0 exists on every server
    encoding, collate, ctype, provider, checksums = row
    if provider != "c":
        raise UpgradeRefused(f"template0 uses locale provider {provider!r}; pg_ops upgrades libc clusters only")
    return [f"--encoding={encoding}", f"--lc-collate={collate}", f"--lc-ctype={ctype}", "--locale-provider=libc",
            "--data-checksums" if checksums == "on" else "--no-data-checksums"]


def initdb_command(new_bin: Path, data: Path, pwfile: Path, options: list[str]) -> list[str]:
    """The new major's empty cluster, its superuser `postgres` with the old one's password."""
    return [str(new_bin / "initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}",
            "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", *options, "--no-instructions"]


def pg_upgrade_command(old_bin: Path, new_bin: Path, old_data: Path, new_data: Path, socket_dir: Path,
                       port: int, *, check: bool, jobs: int = 2, old_options: str = "") -> list[str]:
    """pg_upgrade --link (the new cluster takes the old one's files by hard link: no copy, and
    no way back once the new server has started), or only its checks. Both servers on `port`
    in turn, reached through a socket in `socket_dir` alone. `old_options`: the old server's
    (controldata.last_run_options: its replicas can replay its shutdown after an undo)."""
    return [str(new_bin / "pg_upgrade"), "--old-bindir", str(old_bin), "--new-bindir", str(new_bin),
            "--old-datadir", str(old_data), "--new-datadir", str(new_data), "--username", "postgres",
            "--old-port", str(port), "--new-port", str(port), "--socketdir", str(socket_dir), "--link",
            "--jobs", str(jobs), *(["--old-options", old_options] if old_options else []),
            *(["--check"] if check else [])]


def failure_reason(output: str, report_files: list[Path]) -> str:
    """pg_upgrade's own reason in one line: from its first check that is not "ok" (or its last
    lines) on, without the paths of files that go with the scratch server, then the first words
    of each report file it wrote (the objects it refuses)."""
    lines = [" ".join(line.split()) for line in output.splitlines()]
    checks = [i for i, line in enumerate(lines) if line.startswith("Checking ")]
    failed = next((i for i in checks if not lines[i].endswith(" ok")), None)
    start = failed if failed is not None else max(len(lines) - 4, 0)
    kept = [line for line in lines[start:] if line and not line.startswith("/") and line != "Failure, exiting"
            and not line.endswith("is in the file:")]
    reason = " ".join(kept)[:600]
    for path in report_files:
        try:
            head = " ".join(path.read_text(errors="replace").split()[:30])
        except OSError:
            continue
        reason += f" [{path.name}: {head}]"
    return reason or "pg_upgrade failed and printed nothing"


INSTALLED_EXTENSIONS_SQL = """
select e.extname, e.extversion, a.default_version
from pg_extension e left join pg_available_extensions a on a.name = e.extname
order by e.extname
"""


def installed_extensions(conn: psycopg.Connection) -> dict[str, tuple[str, str | None]]:
    """extension -> (installed version, the server's default version of it; None: the server
    does not ship it)."""
    return {name: (version, default) for name, version, default in conn.execute(INSTALLED_EXTENSIONS_SQL)}


def update_extensions(conn: psycopg.Connection) -> list[str]:
    """ALTER EXTENSION … UPDATE for every extension behind the server's default version (what
    pg_upgrade's update_extensions.sql does); returns "name old -> new" per update."""
    updated = []
    for name, (version, default) in installed_extensions(conn).items():
        if default is not None and version != default:
            conn.execute(sql.SQL("alter extension {} update").format(sql.Identifier(name)))
            updated.append(f"{name} {version} -> {default}")
    return updated
