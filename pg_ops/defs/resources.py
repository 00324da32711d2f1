"""The pg_ops resource: which cluster specs this code location operates."""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from pg_ops import settings
from pg_ops.operations.context import ClusterContext
from pg_ops.spec import ClusterSpec, load_specs, select_spec


class PgOpsResource(dg.ConfigurableResource):
    """Cluster specs come from PG_OPS_CLUSTERS (a file or a folder); `clusters_path` overrides."""

    clusters_path: str | None = None
    _specs: list[ClusterSpec] | None = PrivateAttr(default=None)

    @cached_property
    def _path(self) -> Path:
        return Path(self.clusters_path) if self.clusters_path else settings.clusters_path()

    def specs(self) -> list[ClusterSpec]:
        if self._specs is None:
            self._specs = load_specs(self._path)
        return self._specs

    def spec(self, cluster: str) -> ClusterSpec:
        return select_spec(self.specs(), cluster)

    def cluster(self, cluster: str, log: logging.Logger | None = None) -> ClusterContext:
        return ClusterContext.for_spec(self.spec(cluster), log)
