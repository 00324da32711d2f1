"""The pg_ops code location. Kept fast to import: every run launch imports it."""

from __future__ import annotations

import dagster as dg

from pg_ops.defs import backups, deployment, drift, drills, failover, health, wal
from pg_ops.defs.resources import PgOpsResource
from pg_ops.spec import ClusterSpec, load_specs

# Each area module declares its own definitions from the specs.
AREAS = [deployment, failover, health, backups, drills, drift, wal]


def build_defs(specs: list[ClusterSpec]) -> dg.Definitions:
    return dg.Definitions.merge(
        *(area.build(specs) for area in AREAS),
        dg.Definitions(resources={"pg_ops": PgOpsResource()}),
    )


SPECS = load_specs()
defs = build_defs(SPECS)
