"""barman-cloud (the tools CloudNativePG uses) for S3 stores: the archive and restore
commands PostgreSQL runs, and the restore of a base backup barman-cloud-backup made (pg_ops
streams its own base backups since; operations/wal.py).

Layout in the bucket (barman-cloud's own): destination `s3://<bucket>/<prefix>/<cluster>.wal`,
server name the cluster's system identifier, so `<cluster>.wal/<sysid>/` holds
`wals/<timeline+log>/<segment>.zst`, `wals/<tl>.history` and `base/<backup_id>/` (pg_ops's
data.tar.zst, or barman-cloud-backup's data.tar.lz4, and backup.info written last).
`<cluster>.wal`: a cluster name has no dot, so it never collides with a logical backup folder
`<cluster>/`; `<sysid>`: a cluster made again under the same name is another system and never
archives into the old one's folder. The archive command reads its server's own identifier from
`global/pg_control` at run time (the first 8 bytes), so one command serves every member, a
re-made cluster and a recovered one.

The commands run as the server user (archive, restore) or as pg_ops (restore of a base
backup), always from barman-cloud's own venv (settings.barman_bin()). S3 keys
reach them through an AWS shared-credentials file (the server user's) or the child's
environment (pg_ops's runs), never argv.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pg_ops import settings
from pg_ops.errors import PgOpsError

READ_TIMEOUT_S = 20  # an S3 endpoint that hangs fails an archive attempt instead of blocking it
WAL_COMPRESSION = "--zstd"  # a switched, mostly empty segment compresses to a few KB


class BarmanFailed(PgOpsError):
    pass


@dataclass(frozen=True)
class S3Target:
    """Where one cluster's archive lives, and how to reach it (no secret in here)."""

    bucket: str
    prefix: str
    server: str | None  # the system identifier; None: the archiving server's own (archive_command only)
    endpoint_url: str | None
    region: str | None
    encryption: str | None

    @property
    def destination(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def cloud_args(self) -> list[str]:
        args = ["--cloud-provider", "aws-s3"]
        if self.endpoint_url:
            args += ["--endpoint-url", self.endpoint_url, "--addressing-style", "path"]
        return args

    def env(self) -> dict[str, str]:
        return {"AWS_DEFAULT_REGION": self.region or "us-east-1", "AWS_CONFIG_FILE": "/dev/null"}


def tool(name: str, bin_dir: Path | None = None) -> str:
    return str((bin_dir or settings.barman_bin()) / name)


def archive_command(target: S3Target, bin_dir: Path | str, credentials_file: str | None) -> str:
    """`archive_command` (shell syntax, as PostgreSQL runs it). bin_dir "" = from PATH (the image)."""
    env = {**target.env(), **({"AWS_SHARED_CREDENTIALS_FILE": credentials_file} if credentials_file else {})}
    argv = [_path(bin_dir, "barman-cloud-wal-archive"), *target.cloud_args(), WAL_COMPRESSION,
            "--read-timeout", str(READ_TIMEOUT_S)]
    if target.encryption:
        argv += ["-e", target.encryption]
    if target.server:
        return _shell(env, argv + [target.destination, target.server]) + " %p"
    return f"{OWN_SYSID} && " + _shell(env, argv + [target.destination]) + ' "$sysid" %p'


# The system identifier of the server running the command (cwd: its data dir), native-endian as
# pg_control stores it; an empty result fails the command rather than archiving anywhere else.
OWN_SYSID = "sysid=$(od -An -tu8 -N8 global/pg_control | tr -d ' ') && [ -n \"$sysid\" ]"


def restore_command(target: S3Target, bin_dir: Path | str, credentials_file: str | None) -> str:
    assert target.server, "a restore reads one incarnation's archive"
    env = {**target.env(), **({"AWS_SHARED_CREDENTIALS_FILE": credentials_file} if credentials_file else {})}
    argv = [_path(bin_dir, "barman-cloud-wal-restore"), *target.cloud_args(), target.destination, target.server]
    return _shell(env, argv) + " %f %p"


def _path(bin_dir: Path | str, name: str) -> str:
    return str(Path(bin_dir) / name) if str(bin_dir) else name


def _shell(env: dict[str, str], argv: list[str]) -> str:
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), *map(shlex.quote, argv)])


def _run(argv: list[str], env: dict[str, str], what: str, timeout: float) -> str:
    full_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/nonexistent", **env}
    try:
        out = subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BarmanFailed(f"{what}: no result after {timeout:g} s") from None
    if out.returncode != 0:
        lines = [ln for ln in (out.stderr or out.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "ERROR" in ln or "Error" in ln] or lines or ["no output"]
        raise BarmanFailed(f"{what} failed (exit {out.returncode}): {errors[-1].strip()}")
    return out.stdout


def restore_base_backup(target: S3Target, backup_id: str, data_dir: Path, keys_env: dict[str, str],
                        timeout: float = 6 * 3600) -> None:
    assert target.server, "a restore reads one incarnation's archive"
    argv = [tool("barman-cloud-restore"), *target.cloud_args(), target.destination, target.server, backup_id,
            str(data_dir)]
    _run(argv, {**target.env(), **keys_env}, f"barman-cloud-restore of base backup {backup_id}", timeout)


def keys_env(access_key: str | None, secret_key: str | None) -> dict[str, str]:
    """The child's environment for pg_ops's own barman runs (None: boto3's default chain)."""
    if not access_key:
        return {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
                if k in os.environ}
    return {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key or ""}
