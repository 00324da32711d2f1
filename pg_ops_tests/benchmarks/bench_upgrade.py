"""What a major-version upgrade (16 -> 18) costs, on the same data each time:
  (a) the in-place upgrade's downtime window (`pg-ops upgrade`: replicas and primary stopped,
      pg_upgrade --check and --link, the primary writable again on 18), 3-member cluster;
  (b) the baseline measured in the same run: raw `pg_upgrade --link` by hand on one server of
      the same data (clean stop, pg_upgrade --link, start until it accepts connections; initdb
      done beforehand, as in (a));
  (c) the rehearsal's duration (restore of the backup, upgrade and proof on a scratch server);
  (d) the blue/green upgrade's window (`pg-ops upgrade --as NEW`: the source read-only, NEW
      caught up, sequences, replication dropped, every table compared) and its whole run, on a
      cluster of the same data with wal_level logical;
  (e) the in-place upgrade of a 3-member Kubernetes cluster of the same data on the real control
      plane (its pods really on 16, then an image with both majors; the member script runs
      pg_upgrade in the primary's pod): its window against (b).
Target (issue 25): (a) at most 1.5x (b); the replicas' re-clone comes after the window. (d) is
reported against (b) too: its window does not grow with the data's size. (e) has no target of
its own: the pod's deletion and its replacement's start are in its window.
Data: DATA_ROWS rows in one table and CATALOG_TABLES small tables with an index each (pg_upgrade's
time is mostly the catalog's dump and restore). TRIALS trials, each on fresh clusters.
PostgreSQL 16 is the pgserver wheel's (PG_OPS_PG_BIN), 18 the embedded wheel's."""

from __future__ import annotations

import logging
import os
import time

import yaml

from pg_ops.credentials import SUPERUSER
from pg_ops.operations.backup import backup
from pg_ops.operations.blue_green import blue_green
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.upgrade import rehearse_upgrade, upgrade
from pg_ops.platforms.local_upgrade import MemberDataUpgrade
from pg_ops.postgres import upgrade as pgu
from pg_ops.postgres.session import with_connection
from pg_ops.spec import load_spec, load_specs
from pg_ops_tests.benchmarks.common import emit, summary
from pg_ops_tests.support.helpers import home_environment, running_cluster, write_spec
from pg_ops_tests.support.majors import pg16_bin

TRIALS = int(os.environ.get("PG_OPS_BENCH_TRIALS", "2"))
DATA_ROWS = int(os.environ.get("PG_OPS_BENCH_UPGRADE_ROWS", "1000000"))
CATALOG_TABLES = int(os.environ.get("PG_OPS_BENCH_UPGRADE_TABLES", "300"))
logging.basicConfig(level=logging.WARNING)


def fill(endpoint, password: str, dbname: str = "app") -> None:
    def run(conn):
        conn.execute("create table events (id bigint primary key, at timestamptz not null, body text not null)")
        conn.execute(f"insert into events select g, now() - g * interval '1 second', md5(g::text) "
                     f"from generate_series(1, {DATA_ROWS}) g")
        for i in range(CATALOG_TABLES):
            conn.execute(f"create table t{i} (id int primary key, name text)")
            conn.execute(f"create index t{i}_name on t{i} (name)")
        conn.execute("checkpoint")

    with_connection(endpoint, SUPERUSER, password, run, dbname=dbname, timeout=3600)


def raw_pg_upgrade(home) -> float:
    """A one-member cluster of 16 with the same data and configuration, upgraded by hand: stop,
    pg_upgrade --link, start, until it takes a write (only the record's system identifier is
    set, which the member script checks; initdb done before, as the upgrade does it)."""
    from pg_ops.operations.members import wait_until
    from pg_ops.state import update_state

    spec = load_spec(write_spec(home / "specs", "raw", postgres={"members": 1},
                                databases=[{"name": "app", "owner": "app"}]))
    with running_cluster(spec) as ctx:
        primary = ctx.state().primary
        fill(ctx.endpoints()[primary], ctx.admin_password())
        options = with_connection(ctx.endpoints()[primary], SUPERUSER, ctx.admin_password(), pgu.initdb_options,
                                  timeout=30)
        platform = ctx.platform
        member = MemberDataUpgrade(platform, primary, platform.bin, 18, ctx.admin_password())
        member.prepare(options)
        started = time.monotonic()
        platform.stop_member(primary)
        member.link()
        update_state(platform.state_store(), lambda s: s.model_copy(
            update={"system_identifier": member.system_identifier()}))
        upgraded = ClusterContext.for_spec(spec.model_copy(update={"postgres": spec.postgres.model_copy(
            update={"version": 18})}))
        upgraded.platform.start_member(primary)
        wait_until(upgraded, primary, lambda p: p.writable, "writable on 18")
        return time.monotonic() - started


def kubernetes_upgrade(home, trial: int) -> tuple[float, float]:
    """(e): the window and the whole run of `upgrade` on Kubernetes (the rehearsal is (c)'s)."""
    from pg_ops.operations.deploy import deploy
    from pg_ops_tests.support.helpers import real_kubernetes, spec_from, write_platform_spec
    from pg_ops_tests.support.majors import NEW_IMAGE, OLD_IMAGE

    with real_kubernetes() as kube:
        kube.image_carries(OLD_IMAGE, 16)
        kube.image_carries(NEW_IMAGE, 16, 18)
        path = write_platform_spec(home / "specs", f"k8s{trial}", "kubernetes", postgres={"version": 16},
                                   kubernetes={"image": OLD_IMAGE}, backups={"wal": {"enabled": False}})
        spec = spec_from(path)
        kube.register_cluster(spec)
        ctx = ClusterContext.for_spec(spec)
        deploy(ctx)
        fill(ctx.endpoints()[ctx.state().primary], ctx.admin_password())
        raw = yaml.safe_load(path.read_text())
        raw["postgres"]["version"], raw["kubernetes"]["image"] = 18, NEW_IMAGE
        path.write_text(yaml.safe_dump(raw))
        upgraded = ClusterContext.for_spec(spec_from(path))
        deploy(upgraded)  # the new template first (OnDelete: nothing restarts for it)
        result = upgrade(upgraded, 18, force=True)
        return result.downtime_seconds, result.seconds


def main() -> None:
    os.environ["PG_OPS_PG_BIN"] = str(pg16_bin())
    raws, windows, totals, rehearsals, pg_upgrades, bg_windows, bg_totals = [], [], [], [], [], [], []
    k8s_windows, k8s_totals = [], []
    for trial in range(TRIALS):
        with home_environment() as home:
            raws.append(raw_pg_upgrade(home))
            path = write_spec(home / "specs", f"upgrade{trial}", databases=[{"name": "app", "owner": "app"}])
            ctx = ClusterContext.for_spec(load_spec(path))
            with running_cluster(ctx.spec) as ctx:
                fill(ctx.endpoints()[ctx.state().primary], ctx.admin_password())
                backup(ctx)
                report = rehearse_upgrade(ctx, 18)
                rehearsals.append(report.total_seconds)
                pg_upgrades.append(report.steps["pg_upgrade_seconds"])
                raw = yaml.safe_load(path.read_text())
                raw["postgres"]["version"] = 18
                path.write_text(yaml.safe_dump(raw))
                result = upgrade(ClusterContext.for_spec(load_spec(path)), 18)
                windows.append(result.downtime_seconds)
                totals.append(result.seconds)
            blue = load_spec(write_spec(home / "specs", f"blue{trial}", databases=[{"name": "app", "owner": "app"}],
                                        postgres={"parameters": {"wal_level": "logical"}}))
            with running_cluster(blue) as ctx:
                fill(ctx.endpoints()[ctx.state().primary], ctx.admin_password())
                moved = blue_green(ctx, 18, f"green{trial}")
                bg_windows.append(moved.downtime_seconds)
                bg_totals.append(moved.seconds)
                ClusterContext.for_spec(next(s for s in load_specs() if s.name == f"green{trial}")).platform.teardown()
            k8s_window, k8s_total = kubernetes_upgrade(home, trial)
            k8s_windows.append(k8s_window)
            k8s_totals.append(k8s_total)
    window, base = summary(windows).get("median"), summary(raws).get("median")
    emit("upgrade", {
        "trials": TRIALS, "data_rows": DATA_ROWS, "catalog_tables": CATALOG_TABLES,
        "in_place_downtime_s": summary(windows),
        "baseline_raw_pg_upgrade_link_s": summary(raws),
        "downtime_over_raw": round(window / base, 2) if window and base else None,
        "target_downtime_over_raw": 1.5,
        "in_place_total_s": summary(totals),
        "rehearsal_s": summary(rehearsals),
        "rehearsal_pg_upgrade_step_s": summary(pg_upgrades),
        "blue_green_downtime_s": summary(bg_windows),
        "blue_green_over_raw": round(summary(bg_windows)["median"] / base, 2) if bg_windows and base else None,
        "blue_green_total_s": summary(bg_totals),
        "kubernetes_in_place_downtime_s": summary(k8s_windows),
        "kubernetes_over_raw": round(summary(k8s_windows)["median"] / base, 2) if k8s_windows and base else None,
        "kubernetes_in_place_total_s": summary(k8s_totals),
    })


if __name__ == "__main__":
    main()
