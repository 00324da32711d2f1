"""Where backups live: one `BackupStore` interface, a filesystem and an S3 backend.

`store_for(spec)` builds the store a cluster spec names. S3 credentials come from the env
var names in `credentials_env`, or from a provider the caller hands in for
`credentials_secret` (the Kubernetes platform reads that Secret), or else from boto3's
default chain (instance role, AWS_* env vars). Never from the spec itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pg_ops import settings
from pg_ops.spec import ClusterSpec, FileStoreSpec, S3StoreSpec
from pg_ops.stores.base import BackupStore, StoreError

if TYPE_CHECKING:
    from pg_ops.stores.s3 import S3Credentials

# (secret name) -> credentials; the Kubernetes platform supplies one.
SecretCredentialsProvider = Callable[[str], "S3Credentials"]

__all__ = ["BackupStore", "StoreError", "store_for", "copy_store_for", "store_of", "s3_credentials"]


def s3_credentials(spec: S3StoreSpec, secret_provider: SecretCredentialsProvider | None = None,
                   where: str = "") -> S3Credentials | None:
    from pg_ops.stores.s3 import S3Credentials

    if spec.credentials_env is not None:
        names = spec.credentials_env
        missing = [n for n in (names.access_key, names.secret_key) if not os.environ.get(n)]
        if missing:
            raise StoreError(f"backup store {where or spec.bucket}: S3 credentials env var "
                             f"{', '.join(missing)} is not set (backups.store.credentials_env)")
        return S3Credentials(os.environ[names.access_key], os.environ[names.secret_key])
    if spec.credentials_secret is not None:
        if secret_provider is None:
            raise StoreError(f"backup store {where or spec.bucket}: credentials_secret "
                             f"{spec.credentials_secret!r} needs the Kubernetes platform to read it")
        return secret_provider(spec.credentials_secret)
    return None  # boto3's default credential chain


def store_for(spec: ClusterSpec, secret_provider: SecretCredentialsProvider | None = None) -> BackupStore:
    return store_of(spec.backups.store, secret_provider)


def copy_store_for(spec: ClusterSpec, secret_provider: SecretCredentialsProvider | None = None) -> BackupStore:
    """The second store of `backups.copy_to` (StoreError when the spec names none)."""
    if spec.backups.copy_to is None:
        raise StoreError(f"cluster {spec.name} has no second store (backups.copy_to is not set)")
    return store_of(spec.backups.copy_to.store, secret_provider)


def store_of(config: FileStoreSpec | S3StoreSpec, secret_provider: SecretCredentialsProvider | None = None
             ) -> BackupStore:
    if config.type == "file":
        from pg_ops.stores.filesystem import FileStore

        path = Path(config.path)
        return FileStore(path if path.is_absolute() else settings.home() / path)
    from pg_ops.stores.s3 import S3Store

    return S3Store(config, s3_credentials(config, secret_provider, where=f"s3://{config.bucket}"))
