"""WAL archiving on the local platform: where the archive command writes and what it runs as
the server user, and how a data dir is seeded from a base backup for a recovery.

File store: the archive is `<store>/<cluster>.wal/<sysid>/` (one folder per incarnation, the
archive command picks its server's own), `<cluster>.wal/` owned by the server user (the archive
command writes it; pg_ops's own writes below it take that owner, FileStore's rule); the store's
own folder is pg_ops's, opened to the server user's group for traversal only (0710), so the
dumps beside it stay unreadable. S3: barman-cloud from its own venv (settings.barman_bin():
built from a python the server user can execute, not the project venv whose python lives under
root's 0700 pyenv), with the keys in an AWS credentials file 0600 owned by the server user,
never in postgresql.conf or argv. Nothing outside what pg_ops created is ever chmod-ed: an
unreachable folder is reported instead.
"""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

from pg_ops import settings
from pg_ops.errors import PgOpsError
from pg_ops.platforms.server_user import ServerUser, chown_tree, unreachable_parent
from pg_ops.postgres import barman
from pg_ops.spec import ClusterSpec, FileStoreSpec, S3StoreSpec
from pg_ops.stores import s3_credentials
from pg_ops.stores.wal_archive import ArchiveRef, archive_root, s3_target

WAL_FILE_SCRIPT = Path(__file__).with_name("wal_file.sh")


def file_store_root(spec: ClusterSpec) -> Path:
    store = spec.backups.store
    assert isinstance(store, FileStoreSpec), "called for clusters whose store is a folder"
    path = Path(store.path)
    return path if path.is_absolute() else settings.home() / path


def archive_dir(spec: ClusterSpec, cluster: str | None = None) -> Path:
    """`<store>/<cluster>.wal`: every incarnation's archive is a folder in it."""
    return file_store_root(spec) / archive_root(cluster or spec.name)


def _check_reachable(path: Path, user: ServerUser, what: str) -> None:
    blocked = unreachable_parent(path, user)
    if blocked is not None:
        raise PgOpsError(f"{what} {path} is not reachable by the server user {user.name} (uid {user.uid}): "
                         f"{blocked} does not let it through; move it where that user can reach it")


def _open_store_root(root: Path, user: ServerUser) -> None:
    """The store folder is pg_ops's: let the server user's group traverse it (0710), nothing more."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = root.stat()
    if user.switch and st.st_uid == os.geteuid():
        if st.st_gid != user.gid:
            os.chown(root, -1, user.gid)
        if not st.st_mode & stat.S_IXGRP:
            os.chmod(root, stat.S_IMODE(st.st_mode) | stat.S_IXGRP)


def prepare_file_archive(spec: ClusterSpec, user: ServerUser) -> Path:
    root = file_store_root(spec)
    _open_store_root(root, user)
    folder = archive_dir(spec)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    if user.switch and folder.stat().st_uid != user.uid:
        chown_tree(folder, user)
    _check_reachable(folder, user, "the WAL archive")
    return folder


def write_s3_credentials(spec: ClusterSpec, cluster_root: Path, user: ServerUser) -> str | None:
    """The store's keys as an AWS credentials file only the server user reads (None: the
    keys come from boto3's default chain of the server's environment)."""
    store = spec.backups.store
    assert isinstance(store, S3StoreSpec), "called for clusters whose store is S3"
    creds = s3_credentials(store, None, where=f"s3://{store.bucket}")
    if creds is None:
        return None
    folder = cluster_root / "archive"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / "aws-credentials"
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"[default]\naws_access_key_id = {creds.access_key}\naws_secret_access_key = {creds.secret_key}\n")
    os.replace(tmp, path)
    if user.switch:
        chown_tree(folder, user)
    return str(path)


def archive_command(spec: ClusterSpec, cluster_root: Path, user: ServerUser) -> str | None:
    """Prepare the archive for the server user and return its archive_command (None: off)."""
    if not spec.backups.wal.enabled:
        return None
    if spec.backups.store.type == "file":
        folder = prepare_file_archive(spec, user)
        _check_reachable(WAL_FILE_SCRIPT, user, "the archive script")
        return f"/bin/bash {shlex.quote(str(WAL_FILE_SCRIPT))} archive {shlex.quote(str(folder))} %p %f"
    bin_dir = settings.barman_bin()
    _check_reachable(bin_dir / "barman-cloud-wal-archive", user, "barman-cloud")
    credentials = write_s3_credentials(spec, cluster_root, user)
    return barman.archive_command(s3_target(spec), bin_dir, credentials)


def restore_command(source: ClusterSpec, ref: ArchiveRef, cluster_root: Path, user: ServerUser) -> str:
    """restore_command reading one incarnation (`ref`) of `source`'s archive, for a server of the
    cluster at cluster_root."""
    if source.backups.store.type == "file":
        folder = archive_dir(source) / ref.sysid
        _check_reachable(folder / "wals", user, "the WAL archive")
        return f"/bin/bash {shlex.quote(str(WAL_FILE_SCRIPT))} restore {shlex.quote(str(folder))} %f %p"
    credentials = write_s3_credentials(source, cluster_root, user)
    return barman.restore_command(s3_target(source, ref), settings.barman_bin(), credentials)
