"""The S3 backup store (boto3; AWS, MinIO, SeaweedFS… through `endpoint_url`).

Dumps are streamed with a multipart upload whose part size grows with the part number: the
size of a dump is unknown when it starts, S3 allows 10,000 parts of at least 5 MiB, and a
fixed 8 MiB part would cap an object at 78 GiB. Parts are uploaded by a background thread
while the next one fills, so compression and upload overlap. Any failure aborts the upload:
S3 then holds nothing for that key (not even hidden parts).

Credentials come from an `S3Credentials` value handed in by the caller (see
`pg_ops.stores.store_for`); they are never logged and never part of an error message.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, cast

from pg_ops.spec import S3StoreSpec
from pg_ops.stores.base import BackupStore, ObjectInfo, ObjectWriter, PendingUpload, StoreError

MIB = 1024 * 1024
MIN_PART = 8 * MIB
MAX_PARTS = 10_000
PARTS_PER_STEP = 1000  # the part size doubles every 1000 parts: 8 MiB x 1000 x (2^10 - 1) ≈ 8 TB
MAX_IN_FLIGHT = 2  # parts being uploaded while the next fills; bounds memory to ~3 parts


def part_size(part_number: int) -> int:
    """Size of part `part_number` (1-based) of a stream of unknown length."""
    return MIN_PART << ((part_number - 1) // PARTS_PER_STEP)


@dataclass(frozen=True)
class S3Credentials:
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)

    def __repr__(self) -> str:
        return "S3Credentials(***)"


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def explain(exc: Exception, where: str, action: str) -> StoreError:
    """One line naming the store and the cause; botocore messages never carry the secret key,
    but we build our own anyway so nothing unexpected leaks (and callers raise it `from None`, so
    the botocore exception does not travel along as its cause either)."""
    from botocore.exceptions import (
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    code = _error_code(exc)
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        reason = "S3 endpoint unreachable"
    elif isinstance(exc, ReadTimeoutError):
        reason = "S3 endpoint stopped answering"
    elif isinstance(exc, NoCredentialsError):
        reason = "no S3 credentials found"
    elif code in ("NoSuchBucket", "404") and action == "check":
        reason = "bucket does not exist"
    elif code == "NoSuchBucket":
        reason = "bucket does not exist"
    elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AccessDenied", "InvalidToken",
                  "ExpiredToken"):
        reason = f"S3 refused the credentials ({code})"
    elif code in ("NoSuchKey", "NoSuchUpload"):
        reason = "object does not exist"
    else:
        reason = f"{type(exc).__name__} {code}".strip()
    return StoreError(f"backup store {where}: {action} failed: {reason}")


class S3Writer(ObjectWriter):
    def __init__(self, store: S3Store, key: str):
        self.key = key
        self._store = store
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict] = []
        self._futures: list[Future] = []
        self._pool: ThreadPoolExecutor | None = None
        self._done = False
        self._lock = threading.Lock()

    @property
    def _next_part(self) -> int:
        return len(self._futures) + 1

    def write(self, data: bytes) -> int:
        self._buffer += data
        while len(self._buffer) >= part_size(self._next_part):
            size = part_size(self._next_part)
            chunk = bytes(self._buffer[:size])
            del self._buffer[:size]
            self._submit(chunk)
        return len(data)

    def _submit(self, chunk: bytes) -> None:
        if self._next_part > MAX_PARTS:
            self.abort()
            raise StoreError(f"backup store {self._store.describe()}: {self.key} exceeds {MAX_PARTS} parts")
        if self._upload_id is None:
            try:
                self._upload_id = self._store.client.create_multipart_upload(
                    Bucket=self._store.bucket, Key=self._store.full_key(self.key), **self._store.put_extra)["UploadId"]
            except Exception as exc:  # noqa: BLE001 - botocore raises many kinds
                self.abort()
                raise explain(exc, self._store.describe(), f"starting the upload of {self.key}") from None
            self._pool = ThreadPoolExecutor(max_workers=MAX_IN_FLIGHT, thread_name_prefix="s3-part")
        # Back-pressure: wait for the oldest part before a third one is queued.
        pending = [f for f in self._futures if not f.done()]
        if len(pending) >= MAX_IN_FLIGHT:
            self._wait(pending[0])
        assert self._pool is not None  # made with the upload, above
        self._futures.append(self._pool.submit(self._upload_part, self._next_part, chunk))

    def _upload_part(self, number: int, chunk: bytes) -> dict:
        response = self._store.client.upload_part(
            Bucket=self._store.bucket, Key=self._store.full_key(self.key), UploadId=self._upload_id,
            PartNumber=number, Body=chunk)
        return {"PartNumber": number, "ETag": response["ETag"]}

    def _wait(self, future: Future) -> dict:
        try:
            return future.result()
        except Exception as exc:  # noqa: BLE001
            self.abort()
            raise explain(exc, self._store.describe(), f"uploading {self.key}") from None

    def commit(self) -> None:
        store = self._store
        if self._upload_id is None:
            # Small object: one PUT, no multipart upload to clean up.
            try:
                store.client.put_object(Bucket=store.bucket, Key=store.full_key(self.key), Body=bytes(self._buffer),
                                        **store.put_extra)
            except Exception as exc:  # noqa: BLE001
                raise explain(exc, store.describe(), f"writing {self.key}") from None
            self._done = True
            return
        if self._buffer:
            self._submit(bytes(self._buffer))
            self._buffer.clear()
        parts = [self._wait(f) for f in self._futures]
        try:
            store.client.complete_multipart_upload(
                Bucket=store.bucket, Key=store.full_key(self.key), UploadId=self._upload_id,
                MultipartUpload={"Parts": parts})
        except Exception as exc:  # noqa: BLE001
            self.abort()
            raise explain(exc, store.describe(), f"completing the upload of {self.key}") from None
        self._shutdown()
        self._done = True

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def abort(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._buffer.clear()
        self._shutdown()
        if self._upload_id is not None:
            # Parts uploaded so far are invisible but billed until the upload is aborted.
            with contextlib.suppress(Exception):
                self._store.client.abort_multipart_upload(
                    Bucket=self._store.bucket, Key=self._store.full_key(self.key), UploadId=self._upload_id)


class S3Store(BackupStore):
    def __init__(self, spec: S3StoreSpec, credentials: S3Credentials | None):
        import boto3
        from botocore.config import Config

        self.spec = spec
        self.bucket = spec.bucket
        self.prefix = spec.prefix.strip("/")
        config = Config(
            connect_timeout=5, read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"} if spec.endpoint_url else {},
            # SeaweedFS and older MinIO reject the newer default CRC checksums on uploads.
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        )
        keys = {"aws_access_key_id": credentials.access_key,
                "aws_secret_access_key": credentials.secret_key} if credentials else {}
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=spec.endpoint_url, region_name=spec.region or "us-east-1", config=config, **keys)
        self.put_extra = {"ServerSideEncryption": spec.server_side_encryption} if spec.server_side_encryption else {}

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return f"{where} ({self.spec.endpoint_url})" if self.spec.endpoint_url else where

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001
            raise explain(exc, self.describe(), "check") from None

    def open_writer(self, key: str, *, private: bool = False) -> ObjectWriter:
        return S3Writer(self, key)

    def open_reader(self, key: str) -> BinaryIO:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))["Body"]
        except Exception as exc:  # noqa: BLE001
            raise explain(exc, self.describe(), f"reading {key}") from None
        return cast(BinaryIO, _BodyReader(body))

    def list(self, prefix: str) -> list[ObjectInfo]:
        out = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=self.full_key(prefix)):
                for obj in page.get("Contents", []):
                    out.append(ObjectInfo(self._relative(obj["Key"]), obj["Size"], obj["LastModified"]))
        except Exception as exc:  # noqa: BLE001
            raise explain(exc, self.describe(), f"listing {prefix}") from None
        return sorted(out, key=lambda o: o.key)

    def delete(self, keys: builtins.list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self.full_key(k)} for k in keys[start:start + 1000]]
            try:
                response = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except Exception as exc:  # noqa: BLE001
                raise explain(exc, self.describe(), "deleting objects") from None
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise StoreError(f"backup store {self.describe()}: deleting {self._relative(first['Key'])} failed: "
                                 f"{first.get('Code')} (and {len(errors) - 1} more)")

    def pending_uploads(self, prefix: str) -> builtins.list[PendingUpload]:
        out = []
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(
                    Bucket=self.bucket, Prefix=self.full_key(prefix)):
                for up in page.get("Uploads", []) or []:
                    out.append(PendingUpload(self._relative(up["Key"]), up["UploadId"], up["Initiated"]))
        except Exception as exc:  # noqa: BLE001
            raise explain(exc, self.describe(), "listing multipart uploads") from None
        return out

    def abort_upload(self, upload: PendingUpload) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.full_key(upload.key),
                                               UploadId=upload.upload_id)
        except Exception as exc:  # noqa: BLE001
            if _error_code(exc) != "NoSuchUpload":
                raise explain(exc, self.describe(), f"aborting the upload of {upload.key}") from None


class _BodyReader(io.RawIOBase):
    """botocore's StreamingBody as a plain binary file object."""

    def __init__(self, body):
        self._body = body

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._body.read(None if size is None or size < 0 else size)

    def readinto(self, buffer) -> int:
        data = self._body.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._body.close()
        super().close()
