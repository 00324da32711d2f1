"""The pg-ops code location. Kept fast to import: every run launch imports it.

The definitions are built from the cluster specs as they are when the module is imported: a
code location reload (UI: Deployment -> Reload; `pg-ops` does it when the deployment does not
know a cluster yet) starts a new code server process, which imports it again, so a spec added
or changed is picked up by a reload. In production the code server pod restarts when the specs
ConfigMap changes (deploy/dagster/values.yaml: the specs' checksum annotation)."""

from __future__ import annotations

import dagster as dg

from pg_ops.defs import (
    backups,
    deployment,
    drift,
    drills,
    failover,
    health,
    roles,
    rollout,
    storage,
    store_checks,
    upgrades,
    wal,
)
from pg_ops.defs.resources import PgOpsResource
from pg_ops.spec import ClusterSpec, load_specs

# Each area module declares its own definitions from the specs.
AREAS = [deployment, failover, health, backups, drills, store_checks, drift, wal, roles, rollout, storage, upgrades]


def build_defs(specs: list[ClusterSpec]) -> dg.Definitions:
    return dg.Definitions.merge(
        *(area.build(specs) for area in AREAS),
        dg.Definitions(resources={"pg_ops": PgOpsResource()}),
    )


SPECS = load_specs()
defs = build_defs(SPECS)
