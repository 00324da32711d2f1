"""A local-path provisioner for the real control plane (TEST INFRASTRUCTURE ONLY), doing what
K3s's local-path-provisioner does for a `WaitForFirstConsumer` class:

- a claim of a class whose provisioner is `rancher.io/local-path`, once the real scheduler has
  picked a node for its pod (annotation `volume.kubernetes.io/selected-node`), gets a
  PersistentVolume `pvc-<claim uid>`: a folder of this machine (mode 0777, as the helper pod
  makes it), `hostPath`, node affinity to that node, `claimRef` to the claim; the real
  persistent-volume controller binds them, and from then on the real scheduler keeps the
  claim's pods on that node;
- a volume the controller has `Released` (its claim deleted; reclaim policy Delete) is deleted
  with its folder.

Volume expansion is not done here (the class is rendered without allowVolumeExpansion).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from pg_ops_tests.standin.api import ApiError, RawApi

PROVISIONER = "rancher.io/local-path"
SELECTED_NODE = "volume.kubernetes.io/selected-node"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
CLASS = "local-path"


def storage_class() -> dict:
    """K3s's default class."""
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER, "volumeBindingMode": "WaitForFirstConsumer", "reclaimPolicy": "Delete"}


class LocalPathProvisioner:
    def __init__(self, api: RawApi, root: Path, period: float = 0.4):
        self.api, self.root, self.period = api, root, period
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="local-path-provisioner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.sync()
            except Exception as exc:  # noqa: BLE001 - keep going; a test reads .errors
                self.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")

    def folder(self, claim: dict) -> Path:
        meta = claim["metadata"]
        return self.root / f"pvc-{meta['uid']}_{meta['namespace']}_{meta['name']}"

    def sync(self) -> None:
        classes = {c["metadata"]["name"] for c in self.api.list("storage.k8s.io/v1", "storageclasses")
                   if c.get("provisioner") == PROVISIONER}
        volumes = {v["metadata"]["name"]: v for v in self.api.list("v1", "persistentvolumes")}
        for claim in self.api.list("v1", "persistentvolumeclaims"):
            meta, spec = claim["metadata"], claim["spec"]
            node = (meta.get("annotations") or {}).get(SELECTED_NODE)
            name = f"pvc-{meta['uid']}"
            if spec.get("storageClassName") not in classes or not node or spec.get("volumeName") \
                    or name in volumes or meta.get("deletionTimestamp"):
                continue
            folder = self.folder(claim)
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o777)
            volume = {
                "metadata": {"name": name, "annotations": {PROVISIONED_BY: PROVISIONER}},
                "spec": {"capacity": {"storage": spec["resources"]["requests"]["storage"]},
                         "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                         "persistentVolumeReclaimPolicy": "Delete", "storageClassName": spec["storageClassName"],
                         "volumeMode": "Filesystem",
                         "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                      "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
                         "hostPath": {"path": str(folder), "type": "DirectoryOrCreate"},
                         "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                             {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}}
            try:
                self.api.create(("v1", "persistentvolumes", "", name), volume, "local-path-provisioner")
            except ApiError as exc:
                if exc.code != 409:
                    raise
        for name, volume in volumes.items():
            if (volume["metadata"].get("annotations") or {}).get(PROVISIONED_BY) != PROVISIONER:
                continue
            if (volume.get("status") or {}).get("phase") in ("Released", "Failed") \
                    and volume["spec"].get("persistentVolumeReclaimPolicy") == "Delete":
                path = (volume["spec"].get("hostPath") or {}).get("path")
                if path and Path(path).is_relative_to(self.root):
                    shutil.rmtree(path, ignore_errors=True)
                try:
                    self.api.delete("v1", "persistentvolumes", None, name)
                except ApiError as exc:
                    if exc.code != 404:
                        raise
