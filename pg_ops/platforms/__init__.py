"""Where members run: local processes or Kubernetes pods, behind one Platform protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pg_ops.platforms.base import Platform
    from pg_ops.spec import ClusterSpec


def platform_for(spec: ClusterSpec) -> Platform:
    """The platform backend a spec names (imported lazily: the Kubernetes client is slow to import).
    Both subclass Platform, so mypy checks each against the contract (platforms/base.py)."""
    if spec.platform == "local":
        from pg_ops.platforms.local import LocalPlatform

        return LocalPlatform(spec)
    from pg_ops.platforms.kubernetes import KubernetesPlatform

    return KubernetesPlatform(spec)
