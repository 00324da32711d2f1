"""Writing rendered manifests as YAML, one file per kind, plus a kustomization.yaml."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import yaml

from pg_ops import settings
from pg_ops.errors import PgOpsError
from pg_ops.render import names as k
from pg_ops.spec import ClusterSpec

HEADER = ("# Rendered by `pg-ops render --cluster {name}` from the cluster spec {name}.\n"
          "# Do not edit: change the spec (or pg_ops/render/) and render again; a test fails when stale.\n")


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (scripts, config files), so Git diffs stay readable;
    no anchors/aliases (a selector repeated is clearer than &id001)."""

    def ignore_aliases(self, data) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objects: list[dict]) -> str:
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


def default_output_dir(spec: ClusterSpec) -> Path:
    return settings.REPO_ROOT / "deploy" / "kubernetes" / spec.name


def check_git_safe(spec: ClusterSpec, manifests: list[dict]) -> None:
    """What pg_ops owns never goes to Git: ArgoCD would undo every failover (role labels) or
    overwrite generated passwords and the desired state."""
    for obj in manifests:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind == "Secret":
            raise PgOpsError(f"render {spec.name}: Secret {name} must never be rendered for Git")
        if kind == "ConfigMap" and name == k.state_configmap(spec):
            raise PgOpsError(f"render {spec.name}: the desired-state ConfigMap {name} is owned by pg_ops")
        template = obj.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
        if k.LABEL_ROLE in template or k.LABEL_ROLE in obj["metadata"].get("labels", {}):
            raise PgOpsError(f"render {spec.name}: {kind} {name} carries the role label {k.LABEL_ROLE}")


def files_by_kind(spec: ClusterSpec, manifests: list[dict]) -> dict[str, str]:
    """{file name: YAML text}: one file per kind (multi-document) and kustomization.yaml."""
    grouped: dict[str, list[dict]] = {}
    for obj in manifests:
        grouped.setdefault(f"{obj['kind'].lower()}.yaml", []).append(obj)
    header = HEADER.format(name=spec.name)
    files = {name: header + to_yaml(objs) for name, objs in grouped.items()}
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": list(grouped)}
    files["kustomization.yaml"] = header + to_yaml([kustomization])
    return files


def write_manifests(spec: ClusterSpec, manifests: list[dict], out_dir: Path) -> list[Path]:
    """Replace out_dir's YAML files with the rendered ones (a kind that disappeared goes too)."""
    if spec.platform != "kubernetes":
        raise PgOpsError(f"render {spec.name}: the cluster's platform is {spec.platform}, not kubernetes")
    files = files_by_kind(spec, manifests)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}-") as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
        for stale in out_dir.glob("*.yaml"):
            if stale.name not in files:
                stale.unlink()
        for name in files:
            shutil.move(str(Path(tmp) / name), out_dir / name)
    return [out_dir / name for name in files]
