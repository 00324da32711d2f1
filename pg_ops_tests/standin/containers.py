"""The stand-in kubelet's container runner (standin/kubelet.py drives it per node): it runs a pod's
member container as a REAL process on this machine, the way a node's container runtime would,
so the rendered pod spec is what runs.

- A container whose command is the member script (`bash <script volume>/member.sh`) is started
  as that script, from the member-script ConfigMap the pod mounts, as the unprivileged server
  user (the image's uid 999), with the container's env translated to this machine: container
  paths become the volumes' folders, PGOPS_PORT the loopback port of this pod incarnation (what
  its pod IP leads to), PGOPS_BIN the wheel's PostgreSQL bin folder (the image's is 16; these are
  18; an image named in `image_majors` runs the majors listed there instead, each from this
  machine's binaries of it, with PGOPS_BINS a folder of them: an image with two majors, for the
  upgrade in place), PGOPS_LISTEN loopback, env from a Secret's or ConfigMap's key read when the container
  starts, and the image's barman-cloud tools (on its PATH) this machine's barman venv (and its
  python, PGOPS_PYTHON, with boto3 and zstandard). A point-in-time drill's recovery pod
  (`bash <secret volume>/recover_pod.sh`) runs the same way. A container of a local image (a
  folder of programs here: the user-code venv, `standin/pgbouncer_image/`) runs its command's
  program from that folder, with TMPDIR its writable layer, PGOPS_STANDIN_MOUNTS its volumes'
  folders and PG_OPS_K8S_ADDRESSES the stand-in cluster DNS; as the server user when its pod sets
  a runAsUser. Other containers (the exporter sidecar) are not run and count as ready.
- Volumes: a PVC mounts its PersistentVolume's folder; an emptyDir is a folder per pod
  (root:fsGroup, setgid 2777, as the kubelet makes it, kept across container restarts, gone with
  the pod); a ConfigMap or Secret is materialized like the kubelet's atomic writer (`..data`
  symlink swapped to a new folder, keys as symlinks into it, defaultMode, group fsGroup) at
  container start, and refreshed `sync_delay` seconds (plus a per-pod jitter) after the object
  changed (0 by default; about a minute on a real node: the periodic pod sync). A pod whose
  ConfigMap/Secret volume is missing stays ContainerCreating, saying why. Two containers of one
  member on the same node (a force-deleted pod's, still stopping, and its replacement's) share
  the data directory, which only member.sh's lock keeps apart.
- Probes (exec, and tcpSocket against the pod's loopback port) run as the kubelet runs them: the
  startup probe first (liveness and readiness wait for it), each every periodSeconds with
  timeoutSeconds, failureThreshold and successThreshold; Ready follows the readiness probe; a
  failing startup or liveness probe restarts the container (TERM, KILL after the grace period,
  restartCount + 1, events `Unhealthy` and `Killing`). A container that exits is restarted with
  CrashLoopBackOff.
- Termination: TERM to the container's first process and KILL to the whole process group after
  the grace period (or once that process exited); a force-deleted pod's container is killed when
  the kubelet notices (`force_kill_delay`, 0 by default) with its minimum grace (2 s).

`Clock.scale` shortens the kubelet's own clocks (probe periods and initial delays, grace periods,
crash back-off) for the suite; probe timeouts, member.sh's own timeouts and `sync_delay` are not
scaled.

Test infrastructure only: not part of pg_ops.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pg_ops import settings
from pg_ops.errors import PgOpsError
from pg_ops.platforms.kubernetes import ADDRESSES_ENV
from pg_ops.platforms.local import _pid_alive
from pg_ops.platforms.server_user import ServerUser
from pg_ops.render import names as names
from pg_ops_tests.standin.api import ApiError, RawApi, now

MIN_KILL_GRACE_S = 2.0  # the kubelet's minimumGracePeriodInSeconds, for a force-deleted pod
CRASH_BACKOFF_S = 10.0  # first restart delay of a crashed container, doubling, at most 300 s
# Exec runs on this machine, as the container's user: only commands that read a volume (the
# member script's report: cat), pg_ctl from the image's PostgreSQL bin folder (run from the
# wheel's), and sh (the fence's marker, then pg_ctl): every argument that is a container path
# is translated, the script text itself is not (pg_ops passes paths as arguments).
EXEC_COMMANDS = {"df", "du", "cat", "sh"} | {f"{names.pg_bin(m)}/pg_ctl" for m in (16, 17, 18)}
IMAGE_BIN = re.compile(names.PG_BINS.replace("{major}", "([0-9]+)") + "/")
EXEC_TIMEOUT_S = 30
PROBE_OUTPUT_CHARS = 300


TERMINATION_MESSAGE_PATH = "/dev/termination-log"  # the container default
# pg_ops's scripts for the cluster's image, run here as the server user: the member script, and
# the point-in-time drill's recovery pod (its script comes in a Secret volume).
SCRIPTS = ("/member.sh", "/recover_pod.sh")


def termination_message(container: Container) -> dict[str, str]:
    """What the container wrote to its termination message file, as the kubelet reports it
    (the first 4096 bytes; nothing when it wrote nothing)."""
    try:
        text = (container.pod_dir / "termination-log").read_bytes()[:4096].decode(errors="replace")
    except OSError:
        return {}
    return {"message": text} if text else {}


def _barman_bin() -> str:
    try:
        return str(settings.barman_bin())
    except PgOpsError:
        return "/nonexistent-barman"  # no barman venv: an archive command fails, saying so


def _translate_path(value: str, mounts: dict[str, Path]) -> str:
    """A container path -> this machine's path, through the longest mount path prefix."""
    for mount in sorted(mounts, key=len, reverse=True):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return str(mounts[mount]) + value[len(mount.rstrip("/")):]
    return value


@dataclass
class Probe:
    kind: str  # startup | liveness | readiness
    spec: dict
    failures: int = 0
    successes: int = 0


@dataclass
class Container:
    """One incarnation of a pod's postgres container: the member script's process group."""

    uid: str
    namespace: str
    pod: str
    node: str
    port: int
    pod_dir: Path
    mounts: dict[str, Path]
    env: dict[str, str]
    claims: list[str]  # claim uids it mounts
    grace_s: float
    restarts: int = 0
    proc: subprocess.Popen | None = None
    started_at: str = ""
    started: bool = False  # the startup probe passed (or there is none)
    ready: bool = False
    killing: bool = False  # a stop is under way (pod gone, deleted, or a probe restart)
    terminating: bool = False  # stopped for good (its pod is deleted or gone)
    gone: bool = False  # its process group is dead and will not be restarted
    crashes: int = 0
    crashed_at: float | None = None
    next_backoff_s: float | None = None  # a test's back-off for the next crash, unscaled (crash_pod)
    last_state: dict = field(default_factory=dict)
    synced: dict[str, str] = field(default_factory=dict)  # volume -> resourceVersion materialized
    seen: dict[str, tuple[str, float]] = field(default_factory=dict)  # volume -> (rv, first seen)
    sync_jitter: float = 0.0  # added to sync_delay for this container (refreshes differ per pod)
    name: str = names.CONTAINER
    # member: the member script as the server user; process: a local image's command as this
    # process's user; process-unprivileged: one whose pod sets a runAsUser, as the server user
    kind: str = "member"
    finished: int | None = None  # exit code of a container its pod does not restart (restartPolicy)
    probes: list[Probe] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def log(self) -> Path:
        return self.pod_dir / "postgres.log"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def group_alive(self) -> bool:
        return self.proc is not None and _pid_alive(self.proc.pid)


class Kubelet:
    """Every node's kubelet (one object; `partitioned` nodes are skipped by the caller)."""

    def __init__(self, store: RawApi, root: Path, user: ServerUser, clock):
        self.store, self.root, self.user, self.clock = store, root, user, clock
        self.containers: dict[str, Container] = {}  # pod uid -> container
        self.threads: list[threading.Thread] = []
        self.force_kill_delay = 0.0
        self.sync_delay = 0.0
        self.local_images: dict[str, Path] = {}  # image -> the folder its commands are found in here
        # member image -> the PostgreSQL majors it carries, run from this machine's binaries of
        # each; an image not named here runs the wheel's (18) whatever its tag says.
        self.image_majors: dict[str, tuple[int, ...]] = {}
        self.addresses: Path | None = None  # the stand-in cluster DNS (standin/network.py), for local images
        self.events: list[dict] = []

    # -- folders -----------------------------------------------------------------------------
    def pod_dir(self, uid: str) -> Path:
        return self.root / "pods" / uid

    def claim_dir(self, claim: dict) -> Path:
        meta = claim["metadata"]
        return self.root / "volumes" / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"

    def make_claim_dir(self, claim: dict) -> Path:
        path = self.claim_dir(claim)
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o777)  # what local-path's helper pod makes (mkdir -m 0777)
        return path

    def _private_dir(self, path: Path, mode: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
        if self.user.switch:
            os.chown(path, 0, self.user.gid)

    # -- events ------------------------------------------------------------------------------
    def event(self, pod: dict | Container, reason: str, message: str, kind: str = "Warning") -> None:
        if isinstance(pod, Container):
            ns, name, uid = pod.namespace, pod.pod, pod.uid
        else:
            ns, name, uid = pod["metadata"]["namespace"], pod["metadata"]["name"], pod["metadata"]["uid"]
        event_name = f"{name}.{len(self.events):x}"
        body = {"metadata": {"name": event_name, "namespace": ns}, "type": kind, "reason": reason,
                "message": message, "source": {"component": "kubelet"}, "firstTimestamp": now(),
                "involvedObject": {"kind": "Pod", "namespace": ns, "name": name, "uid": uid,
                                   "fieldPath": f"spec.containers{{{names.CONTAINER}}}"}}
        self.events.append(body)
        with contextlib.suppress(ApiError):
            self.store.create(("v1", "events", ns, event_name), body, "kubelet")

    # -- volumes -----------------------------------------------------------------------------
    def volume_objects(self, pod: dict) -> tuple[dict[str, dict | None], str]:
        """ConfigMap/Secret volume name -> the object (None: optional and missing), or a
        ContainerCreating reason."""
        ns = pod["metadata"]["namespace"]
        out: dict[str, dict | None] = {}
        for volume in pod["spec"].get("volumes", []):
            for kind, resource, key in (("configMap", "configmaps", "name"), ("secret", "secrets", "secretName")):
                if kind not in volume:
                    continue
                source = volume[kind]
                obj = self.store.find(("v1", resource, ns, source[key]))
                if obj is None and not source.get("optional", False):
                    what = "configmap" if kind == "configMap" else "secret"
                    return {}, (f'MountVolume.SetUp failed for volume "{volume["name"]}" : '
                                f'{what} "{source[key]}" not found')
                out[volume["name"]] = obj
        return out, ""

    def materialize(self, pod: dict, container: Container, volume: dict, obj: dict | None) -> None:
        """The kubelet's atomic writer: a new folder with the keys, then `..data` swapped to it."""
        kind = "configMap" if "configMap" in volume else "secret"
        source = volume[kind]
        target = container.pod_dir / "volumes" / volume["name"]
        self._private_dir(target, 0o755)
        data = dict((obj or {}).get("data") or {})
        if kind == "secret":
            data = {k: base64.b64decode(v).decode() for k, v in data.items()}
        if kind == "configMap" and "postgresql.conf" in data:
            # A dev machine, not a node: members SIGKILLed by tests must not leave their dynamic
            # shared memory in this machine's /dev/shm (mmap keeps it in the data dir).
            data["postgresql.conf"] += "\ndynamic_shared_memory_type = mmap\n"
        items = source.get("items")
        files = {i["path"]: (data.get(i["key"]), i.get("mode")) for i in items} if items else \
            {k: (v, None) for k, v in data.items()}
        mode_default = source.get("defaultMode", 0o644)
        version = (obj or {}).get("metadata", {}).get("resourceVersion", "0")
        stamp = target / f"..{version}_{time.monotonic_ns()}"
        stamp.mkdir()
        os.chmod(stamp, 0o755)
        for path, (text, mode) in files.items():
            if text is None:
                continue
            file = stamp / path
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(text)
            os.chmod(file, mode if mode is not None else mode_default)
            if self.user.switch:
                os.chown(file, 0, self.user.gid)  # group fsGroup, as the kubelet sets it
        link = target / "..data_tmp"
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(stamp.name)
        os.replace(link, target / "..data")
        for path in files:
            entry = target / path.split("/", 1)[0]
            if not entry.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                entry.symlink_to(f"..data/{path.split('/', 1)[0]}")
        for old in target.glob("..*_*"):
            if old != stamp:
                shutil.rmtree(old, ignore_errors=True)

    def sync_volumes(self, pod: dict, container: Container, force: bool = False) -> None:
        """Refresh the ConfigMap/Secret volumes whose object changed, once it changed
        `sync_delay` seconds ago (at once when the container starts)."""
        objects, _ = self.volume_objects(pod)
        by_name = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        for name, obj in objects.items():
            version = (obj or {}).get("metadata", {}).get("resourceVersion", "absent")
            if container.synced.get(name) == version:
                continue
            if not force:
                rv, first = container.seen.get(name, (None, 0.0))
                if rv != version:
                    container.seen[name] = (version, time.monotonic())
                    first = time.monotonic()
                if time.monotonic() - first < self.sync_delay + (container.sync_jitter if self.sync_delay else 0.0):
                    continue
            self.materialize(pod, container, by_name[name], obj)
            container.synced[name] = version

    # -- starting ----------------------------------------------------------------------------
    @staticmethod
    def member_container(pod: dict) -> dict | None:
        for c in pod["spec"].get("containers", []):
            command = [*c.get("command", []), *c.get("args", [])]
            if c["name"] == names.CONTAINER and any(a.endswith(SCRIPTS) for a in command):
                return c
        return None

    def runnable_container(self, pod: dict) -> dict | None:
        """The container this machine can run for the pod: the member script, or the first
        container of an image that is a folder of programs here (`local_images`: the Dagster
        user-code image is the project's venv, so a run pod's `dagster api execute_run` runs)."""
        member = self.member_container(pod)
        if member is not None:
            return member
        return next((c for c in pod["spec"].get("containers", []) if c.get("image") in self.local_images), None)

    def _mounts(self, pod: dict, spec: dict, pod_dir: Path, claim_dirs: dict[str, Path]) -> dict[str, Path]:
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        mounts = {}
        for mount in spec.get("volumeMounts", []):
            volume = volumes.get(mount["name"], {})
            if "persistentVolumeClaim" in volume:
                mounts[mount["mountPath"]] = claim_dirs[volume["persistentVolumeClaim"]["claimName"]]
            else:
                mounts[mount["mountPath"]] = pod_dir / "volumes" / mount["name"]
        # The kubelet bind-mounts a file per container at terminationMessagePath.
        mounts[spec.get("terminationMessagePath", TERMINATION_MESSAGE_PATH)] = pod_dir / "termination-log"
        return mounts

    def _env(self, pod: dict, spec: dict, port: int, mounts: dict[str, Path]) -> dict[str, str]:
        # The image's PATH has its barman-cloud tools (the archive command names them bare):
        # here, the machine's barman venv, the same pins.
        env = {"PATH": f"{_barman_bin()}:/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C", "HOME": str(self.root)}
        ns = pod["metadata"]["namespace"]
        for var in spec.get("env", []):
            source = var.get("valueFrom") or {}
            if "fieldRef" in source:
                value = {"metadata.name": pod["metadata"]["name"], "metadata.namespace": ns,
                         "status.podIP": "127.0.0.1"}.get(source["fieldRef"]["fieldPath"], "")
            elif "secretKeyRef" in source or "configMapKeyRef" in source:
                # As the kubelet: the key's value when the container starts (a missing optional
                # key: unset; a missing required one would keep the pod in CreateContainerConfigError,
                # not modelled: unset too).
                ref = source.get("secretKeyRef") or source["configMapKeyRef"]
                obj = self.store.find(("v1", "secrets" if "secretKeyRef" in source else "configmaps", ns, ref["name"]))
                raw = ((obj or {}).get("data") or {}).get(ref["key"])
                if raw is None:
                    continue
                value = base64.b64decode(raw).decode() if "secretKeyRef" in source else raw
            else:
                value = _translate_path(str(var.get("value", "")), mounts)
            env[var["name"]] = value
        # The member script's contract, bound to this machine.
        env["PGOPS_PORT"] = str(port)
        self._bind_binaries(spec, env, mounts)
        env["PGOPS_LISTEN"] = "127.0.0.1"
        env["PGOPS_PYTHON"] = str(Path(_barman_bin()) / "python3")  # the image's /opt/barman/bin/python3
        return env

    def _bind_binaries(self, spec: dict, env: dict[str, str], mounts: dict[str, Path]) -> None:
        """PGOPS_BIN and PGOPS_BINS on this machine. An image in `image_majors`: a folder of its
        majors (links to settings.pg_bin_for's) beside its termination log, PGOPS_BIN that
        folder's entry for the major the container names (missing when the image lacks it, as
        in a real image; its newest when it names none). Any other image: the wheel's binaries for everything."""
        majors = self.image_majors.get(spec.get("image", ""))
        if majors is None:
            env["PGOPS_BIN"] = str(settings.pg_bin())
            env.pop("PGOPS_BINS", None)
            return
        folder = mounts[spec.get("terminationMessagePath", TERMINATION_MESSAGE_PATH)].parent / "image-bins"
        folder.mkdir(exist_ok=True)
        for major in majors:
            link = folder / str(major)
            if not link.is_symlink():
                link.symlink_to(settings.pg_bin_for(major))
        own = IMAGE_BIN.match(env.get("PGOPS_BIN", "") + "/")
        env["PGOPS_BIN"] = str(folder / (own.group(1) if own else str(max(majors))))
        env["PGOPS_BINS"] = str(folder / "{major}")

    def _exec_binary(self, container: Container, arg: str) -> str | None:
        """A PostgreSQL program of the image, as the container would find it (None: not one)."""
        found = IMAGE_BIN.match(arg)
        if found is None:
            return None
        program = arg.rsplit("/", 1)[1]
        bins = container.env.get("PGOPS_BINS")
        if bins:
            return str(Path(bins.replace("{major}", found.group(1))) / program)
        return str(settings.pg_bin() / program)

    def start(self, pod: dict, node: str, claim_dirs: dict[str, Path], claim_uids: list[str],
              restarts: int = 0, previous: Container | None = None) -> Container | None:
        """Start the pod's runnable container (None: nothing of the pod runs here)."""
        spec = self.runnable_container(pod)
        if spec is None:
            return None
        local_bin = None if spec is self.member_container(pod) else self.local_images[spec["image"]]
        uid = pod["metadata"]["uid"]
        pod_dir = self.pod_dir(uid)
        self._private_dir(pod_dir, 0o755)
        message = pod_dir / "termination-log"  # a fresh one for every container it starts
        message.write_bytes(b"")
        if self.user.switch:
            os.chown(message, self.user.uid, self.user.gid)
        for volume in pod["spec"].get("volumes", []):
            if "emptyDir" in volume:
                self._private_dir(pod_dir / "volumes" / volume["name"], 0o2777)
        if previous is None:
            mounts = self._mounts(pod, spec, pod_dir, claim_dirs)
            port = pod_port(pod)
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30) * self.clock.scale
            container = Container(uid, pod["metadata"]["namespace"], pod["metadata"]["name"], node, port or 0,
                                  pod_dir, mounts, self._env(pod, spec, port or 0, mounts), claim_uids, grace,
                                  name=spec["name"], kind="member" if local_bin is None else "process")
            if local_bin is not None:
                container.env["PATH"] = f"{local_bin}:{container.env['PATH']}"
                # What a program of a local image needs of the node: its container's writable
                # layer (TMPDIR), where its volumes are, and the stand-in cluster DNS.
                layer = pod_dir / "layer"
                self._private_dir(layer, 0o2777)
                container.env["TMPDIR"] = str(layer)
                container.env["PGOPS_STANDIN_MOUNTS"] = json.dumps({k: str(v) for k, v in mounts.items()})
                if self.addresses is not None:
                    container.env[ADDRESSES_ENV] = str(self.addresses)
                if _non_root(pod, spec):
                    container.kind = "process-unprivileged"
        else:  # a restart in the same pod: same volumes, same "IP"
            container, mounts = previous, previous.mounts
        container.restarts = restarts
        if previous is None:
            self.sync_volumes(pod, container, force=True)
        command = [_translate_path(a, mounts) for a in [*spec.get("command", []), *spec.get("args", [])]]
        command[0] = "bash" if command[0].endswith("bash") else command[0]
        if local_bin is not None and (local_bin / Path(command[0]).name).exists():
            command[0] = str(local_bin / Path(command[0]).name)  # the image's program, by its name
        with open(container.log, "ab") as log:
            # A member runs as the image's server user, and so does a local image's command whose
            # pod must not run as root (runAsUser): this machine has that one unprivileged user.
            # Otherwise as this process's user (the venv and the Dagster instance are this user's).
            kwargs = self.user.process_kwargs() if container.kind != "process" else {}
            container.proc = subprocess.Popen(command, env=container.env, cwd=pod_dir, stdin=subprocess.DEVNULL,
                                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                              **kwargs)
        container.started_at = now()
        container.killing = container.gone = False
        container.ready = False
        container.probes = [Probe(kind, spec[f"{kind}Probe"]) for kind in ("startup", "liveness", "readiness")
                            if f"{kind}Probe" in spec]
        container.started = not any(p.kind == "startup" for p in container.probes)
        self.containers[uid] = container
        for probe in container.probes:
            self._spawn(self._probe_loop, container, probe, container.proc.pid,
                        name=f"probe-{probe.kind}-{container.pod}")
        return container

    def _spawn(self, fn, *args, name: str) -> None:
        thread = threading.Thread(target=fn, args=args, name=name, daemon=True)
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        thread.start()

    # -- probes ------------------------------------------------------------------------------
    def run_probe(self, container: Container, probe: dict) -> tuple[bool, str]:
        if "tcpSocket" in probe:  # the container's one port, named or numbered: its loopback port here
            return ((True, "") if port_open(container.port)
                    else (False, f"dial tcp {container.port}: connection refused"))
        command = (probe.get("exec") or {}).get("command")
        if not command:
            return True, ""  # httpGet probes are not run here (documented)
        command = [_translate_path(a, container.mounts) for a in command]
        command[0] = "bash" if command[0].endswith("bash") else command[0]
        kwargs = self.user.process_kwargs()
        try:
            done = subprocess.run(command, env=container.env, cwd=container.pod_dir, capture_output=True,
                                  timeout=probe.get("timeoutSeconds", 1), check=False, **kwargs)
        except subprocess.TimeoutExpired:
            return False, f"command timed out after {probe.get('timeoutSeconds', 1)}s"
        output = (done.stdout + done.stderr).decode(errors="replace").strip()[:PROBE_OUTPUT_CHARS]
        return done.returncode == 0, output

    def _probe_loop(self, container: Container, probe: Probe, pid: int) -> None:
        spec = probe.spec
        period = spec.get("periodSeconds", 10) * self.clock.scale
        failure_threshold = spec.get("failureThreshold", 3)
        success_threshold = spec.get("successThreshold", 1)
        if self.clock.sleep(spec.get("initialDelaySeconds", 0) * self.clock.scale):
            return
        while True:
            with container.lock:
                if container.killing or container.proc is None or container.proc.pid != pid:
                    return
                waiting_for_startup = probe.kind != "startup" and not container.started
                if probe.kind == "startup" and container.started:
                    return
            if not waiting_for_startup:
                ok, output = self.run_probe(container, spec)
                with container.lock:
                    if container.killing or container.proc is None or container.proc.pid != pid:
                        return
                    if ok:
                        probe.failures, probe.successes = 0, probe.successes + 1
                        if probe.kind == "startup":
                            container.started = True
                        if probe.kind == "readiness" and probe.successes >= success_threshold:
                            container.ready = True
                    else:
                        probe.failures, probe.successes = probe.failures + 1, 0
                        self.event(container, "Unhealthy", f"{probe.kind.title()} probe failed: {output}")
                        if probe.kind == "readiness" and probe.failures >= failure_threshold:
                            container.ready = False
                        if probe.kind in ("startup", "liveness") and probe.failures >= failure_threshold:
                            self.event(container, "Killing", f"Container {names.CONTAINER} failed {probe.kind} "
                                                             f"probe, will be restarted", "Normal")
                            self.restart(container)
                            return
            if self.clock.sleep(period if not waiting_for_startup else min(period, 0.1)):
                return

    # -- stopping ----------------------------------------------------------------------------
    def _stop_process(self, container: Container, grace_s: float) -> None:
        """TERM to the container's first process, KILL to its whole group once it exited or the
        grace period is over (what stopping a container does); again if a restart raced it."""
        while True:
            proc = container.proc
            if proc is None:
                return
            if grace_s > 0 and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                deadline = time.monotonic() + grace_s
                while proc.poll() is None and time.monotonic() < deadline and not self.clock.stopped:
                    time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _pid_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            proc.poll()
            with container.lock:
                if container.proc is proc:
                    return

    def restart(self, container: Container) -> None:
        """A failed startup/liveness probe: stop the container, start it again in the same pod."""
        container.killing = True
        container.ready = False

        def run():
            self._stop_process(container, container.grace_s)
            with container.lock:
                pod = self.store.find(("v1", "pods", container.namespace, container.pod))
                container.last_state = {"terminated": {"exitCode": 137, "reason": "Error", "finishedAt": now()}}
                if container.terminating or pod is None or pod["metadata"]["uid"] != container.uid \
                        or pod["metadata"].get("deletionTimestamp"):
                    container.gone = True
                    return
                self.start(pod, container.node, {}, container.claims, container.restarts + 1, previous=container)

        self._spawn(run, name=f"restart-{container.pod}")

    def terminate(self, container: Container, grace_s: float, delay_s: float = 0.0, on_done=None) -> None:
        """Stop a container for good (its pod is deleted or gone); `on_done` runs after."""
        with container.lock:
            if container.terminating:
                return
            container.killing = container.terminating = True
            container.ready = False

        def run():
            if delay_s and self.clock.sleep(delay_s):
                return
            self._stop_process(container, grace_s)
            container.gone = True
            self.containers.pop(container.uid, None)
            if on_done is not None:
                on_done(container)

        self._spawn(run, name=f"terminate-{container.pod}")

    def kill_all(self) -> None:
        for container in list(self.containers.values()):
            container.killing = True
            if container.proc is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(container.proc.pid, signal.SIGKILL)
        for container in list(self.containers.values()):
            if container.proc is not None:
                deadline = time.monotonic() + 5
                while _pid_alive(container.proc.pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
                container.proc.poll()
        for thread in list(self.threads):
            thread.join(timeout=10)

    # -- supervision -------------------------------------------------------------------------
    def supervise(self, pod: dict, container: Container) -> None:
        """A running container: restart it when it exited (CrashLoopBackOff), refresh volumes."""
        with container.lock:
            if container.killing:
                return
            if not container.alive():
                code = container.proc.poll() if container.proc else 1
                policy = pod["spec"].get("restartPolicy", "Always")
                if policy == "Never" or (policy == "OnFailure" and code == 0):
                    if container.finished is None:  # done for good: the pod's phase says how
                        container.finished = code if code is not None else 1
                        container.ready = False
                    return
                if container.crashed_at is None:
                    container.crashed_at = time.monotonic()
                    container.crashes += 1
                    container.ready = False
                    container.last_state = {"terminated": {"exitCode": code, "reason": "Error" if code else "Completed",
                                                           "finishedAt": now(), **termination_message(container)}}
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(container.proc.pid, signal.SIGKILL)  # what the dead container left
                backoff = min(300.0, CRASH_BACKOFF_S * 2 ** (container.crashes - 1)) * self.clock.scale
                if container.next_backoff_s is not None:
                    backoff = container.next_backoff_s
                if time.monotonic() - container.crashed_at < backoff:
                    return
                container.crashed_at = container.next_backoff_s = None
                self.start(pod, container.node, {}, container.claims, container.restarts + 1, previous=container)
                return
        self.sync_volumes(pod, container)

    def status(self, pod: dict, container: Container) -> dict:
        with container.lock:
            if container.finished is not None:
                state = {"terminated": {"exitCode": container.finished,
                                        "reason": "Completed" if container.finished == 0 else "Error",
                                        "startedAt": container.started_at, "finishedAt": now(),
                                        **termination_message(container)}}
            elif container.crashed_at is not None:
                state = {"waiting": {"reason": "CrashLoopBackOff",
                                     "message": f"back-off restarting failed container {container.name}"}}
            elif container.killing and not container.alive():
                state = {"terminated": {"exitCode": 137, "reason": "Error"}}
            else:
                state = {"running": {"startedAt": container.started_at}}
            ready = container.ready and "running" in state
            statuses = [{"name": container.name, "image": _image(pod, container.name), "imageID": "", "ready": ready,
                         "started": container.started and "running" in state,
                         "restartCount": container.restarts, "state": state, "lastState": container.last_state}]
        conditions = [{"type": "PodScheduled", "status": "True"}, {"type": "Initialized", "status": "True"},
                      {"type": "ContainersReady", "status": str(ready)}, {"type": "Ready", "status": str(ready)}]
        phase = "Running" if container.finished is None else "Succeeded" if container.finished == 0 else "Failed"
        return {"phase": phase, "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}], "hostIP": "127.0.0.1",
                "conditions": conditions, "containerStatuses": statuses}

    # -- exec and logs -----------------------------------------------------------------------
    def container_of(self, namespace: str, pod_name: str) -> Container | None:
        pod = self.store.find(("v1", "pods", namespace, pod_name))
        if pod is None:
            return None
        return self.containers.get(pod["metadata"]["uid"])

    def exec_runner(self, container: Container, command: list[str]):
        if command[0] not in EXEC_COMMANDS:
            raise ApiError(400, "BadRequest", f"the fake serves exec of {sorted(EXEC_COMMANDS)} only, not {command[0]}")
        args = [self._exec_binary(container, a) or _translate_path(a, container.mounts) for a in command]
        kwargs = self.user.process_kwargs()

        def run() -> tuple[int, bytes, bytes]:
            proc = subprocess.run(args, capture_output=True, timeout=EXEC_TIMEOUT_S, check=False, env=container.env,
                                  cwd=container.pod_dir, **kwargs)
            return proc.returncode, proc.stdout, proc.stderr

        return run

    def read_log(self, container: Container, tail: int | None) -> str:
        try:
            lines = container.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-tail:] if tail else lines) + "\n"


def _non_root(pod: dict, container: dict) -> bool:
    """The container must not run as root: a non-zero runAsUser, its own or its pod's."""
    user = (container.get("securityContext") or {}).get("runAsUser")
    if user is None:
        user = (pod["spec"].get("securityContext") or {}).get("runAsUser")
    return bool(user)


def _image(pod: dict, container: str = names.CONTAINER) -> str:
    return next((c.get("image", "") for c in pod.get("spec", {}).get("containers", [])
                 if c["name"] == container), "")


class Clock:
    """The kubelet's sense of time: `scale` shortens its periods (probe periods and delays,
    grace periods, crash back-off) for the suite."""

    def __init__(self, scale: float):
        self.scale = scale
        self._stop = threading.Event()

    def sleep(self, seconds: float) -> bool:
        """Sleep; True if the kubelet is stopping."""
        return self._stop.wait(max(seconds, 0))

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()


def pod_port(pod: dict | None) -> int | None:
    """The container port named `postgresql`: where this pod incarnation listens."""
    for container in (pod or {}).get("spec", {}).get("containers", []):
        for port in container.get("ports", []):
            if port.get("name") == names.PORT_NAME:
                return port["containerPort"]
    return None


def container_status(pod: dict, ready: bool, state: dict, restarts: int = 0) -> dict:
    return {"name": names.CONTAINER, "image": _image(pod), "imageID": "", "ready": ready, "restartCount": restarts,
            "state": state}


def waiting_status(pod: dict, reason: str, message: str) -> dict:
    return {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [container_status(pod, False, {"waiting": {"reason": reason, "message": message}})]}


def running_status(pod: dict, ready: bool = True) -> dict:
    """A pod whose containers are not run here (no member script), or a scratch pod."""
    started = (pod.get("status") or {}).get("containerStatuses") or [{}]
    state = (started[0].get("state") if "running" in (started[0].get("state") or {})
             else {"running": {"startedAt": now()}})
    return {"phase": "Running",
            "conditions": [{"type": t, "status": str(ready) if t in ("Ready", "ContainersReady") else "True"}
                           for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "containerStatuses": [container_status(pod, ready, state)]}


def port_open(port: int) -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False

