"""The health, backup and restore-drill operations on the Kubernetes platform: the real control
plane with real PostgreSQL members behind its pods (stand-in nodes), the same operations the local platform
runs in test_health.py, test_backup.py and test_drill.py (which cover their faults in depth)."""

from __future__ import annotations

import json

import psycopg
import pytest

from pg_ops.errors import MemberError
from pg_ops.operations import health
from pg_ops.operations.backup import backup
from pg_ops.operations.deploy import deploy
from pg_ops.operations.drill import DrillFailed, drill
from pg_ops.platforms.kubernetes import KubernetesPlatform
from pg_ops.platforms.kubernetes_api import KubernetesError
from pg_ops.render import names as names
from pg_ops.stores import catalog as cat
from pg_ops_tests.support.backups import copy_backup, fill_app
from pg_ops_tests.support.helpers import fake_of, lose_member, recover_member, wait_for

# Every case here runs on the shared cluster's Kubernetes instance.
pytestmark = pytest.mark.parametrize("shared_any_cluster", ["kubernetes"], indirect=True)


def replicas(ctx) -> list[str]:
    return [m for m in ctx.spec.member_names if m != ctx.state().primary]


def test_health_pass_is_clean_and_measures_storage_through_pod_exec(shared_any_cluster):
    ctx = shared_any_cluster
    result = health.health_pass(ctx)
    assert result.assessment.alerts == []
    rows = {m["name"]: m for m in result.status.to_dict()["members"]}
    assert result.status.platform == "kubernetes"
    for name in replicas(ctx):
        assert rows[name]["streaming"] is True and rows[name]["replication_state"] == "streaming"
        assert rows[name]["lag_bytes"] is not None
    for row in rows.values():
        assert 0 < row["storage_ratio"] < 1 and row["data_dir_total_bytes"] > row["data_dir_used_bytes"] > 0
        assert row["connections"] >= 1


def test_backup_from_a_replica_and_its_drill_pass(shared_any_cluster):
    ctx = shared_any_cluster
    fill_app(ctx, rows=5000)
    manifest = backup(ctx)
    assert manifest.source in replicas(ctx)  # backups.source: replica, reached at its pod
    app = next(d for d in manifest.databases if d.name == "app")
    assert app.row_counts["public.items"] == 5000
    report = drill(ctx, manifest.id)
    assert report.result == "passed" and report.databases["app"]["count_problems"] == []
    assert report.databases["app"]["tables_counted"] == len(app.row_counts)
    record = next(r for r in cat.list_backups(ctx.store(), ctx.name) if r.id == manifest.id)
    assert record.status == "verified"
    # Restored into a temporary pod of the cluster (not a local instance), gone afterwards.
    ns = names.drill_namespace(ctx.spec)  # drills run in their own namespace
    assert report.target.startswith(f"pod {ns}/{ctx.name}-drill-")
    # The pod and its Secret are gone when the drill returns; its container stops once its
    # node's kubelet notices the pod is gone.
    wait_for(lambda: fake_of(ctx).scratch_objects(ns) == [], "nothing of the drill's scratch pod left")


def test_a_failed_drill_leaves_no_drill_pod_or_secret(shared_any_cluster):
    ctx = shared_any_cluster
    fill_app(ctx, rows=100)
    manifest = backup(ctx)
    backup_id = copy_backup(ctx, manifest, 1)
    folder = ctx.store().root / ctx.name / backup_id
    raw = json.loads((folder / cat.MANIFEST).read_text())
    raw["databases"][0]["row_counts"]["public.items"] += 1  # found only after the restore into the pod
    (folder / cat.MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(DrillFailed, match="rows restored, the manifest says"):
        drill(ctx, backup_id)
    drilled = json.loads((folder / cat.DRILL).read_text())
    assert drilled["target"].startswith(f"pod {names.drill_namespace(ctx.spec)}/{ctx.name}-drill-")
    wait_for(lambda: fake_of(ctx).scratch_objects(names.drill_namespace(ctx.spec)) == [],
             "nothing of the drill's scratch pod left")


def test_a_scratch_pod_stuck_pending_fails_clearly_and_is_deleted(shared_any_cluster):
    ctx = shared_any_cluster
    fake = fake_of(ctx)
    ns = names.drill_namespace(ctx.spec)  # drills run in their own namespace
    platform = KubernetesPlatform(ctx.spec)
    platform.pod_start_timeout = 1.0
    fake.hold_scratch_pending()
    try:
        with pytest.raises(MemberError) as err, platform.scratch_target("drill"):
            pytest.fail("the scratch target must not be yielded while its pod is Pending")
    finally:
        fake.hold_scratch_pending(False)
    message = str(err.value)
    assert "\n" not in message
    assert f"scratch pod {ns}/{ctx.name}-drill-" in message and "stuck Pending" in message
    assert "Unschedulable" in message
    wait_for(lambda: fake.scratch_objects(ns) == [], "nothing of the scratch pod left")


def test_scratch_pod_is_no_member_and_reads_its_password_from_a_secret(shared_any_cluster):
    ctx = shared_any_cluster
    fake = fake_of(ctx)
    ns = names.drill_namespace(ctx.spec)  # drills run in their own namespace
    with ctx.platform.scratch_target("drill") as target:
        pod_name = target.name.rsplit("/", 1)[1]
        pod = fake.object("pods", ns, pod_name)
        labels = pod["metadata"]["labels"]
        assert labels[names.LABEL_SCRATCH] == "drill"
        assert not set(names.selector_labels(ctx.spec).items()) <= set(labels.items())
        container = pod["spec"]["containers"][0]
        assert container["image"] == ctx.spec.kubernetes.image
        assert target.password not in json.dumps(pod)  # only a secretKeyRef in the pod spec
        env = {e["name"]: e for e in container["env"]}
        assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == pod_name
        assert fake.object("secrets", ns, pod_name) is not None
        with psycopg.connect(host=target.endpoint.host, port=target.endpoint.port, user="postgres",
                             password=target.password, dbname="postgres") as conn:
            assert conn.execute("select count(*) from pg_database where not datistemplate").fetchone()[0] == 1
        assert pod_name not in ctx.platform.member_endpoints()
    wait_for(lambda: fake.scratch_objects(ns) == [], "nothing of the scratch pod left")
    # pg_ops may create pods only there: in the cluster's namespace a pod could mount (and so
    # read) any of its Secrets, and the real RBAC refuses it.
    api = ctx.platform.api
    with pytest.raises(KubernetesError) as refused:
        api.call("create", "pod", api.core.create_namespaced_pod, ctx.spec.kubernetes.namespace, {
            "metadata": {"name": "mounts-secrets"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    assert refused.value.status == 403 and 'cannot create resource "pods"' in str(refused.value)


def test_lost_replica_pod_is_reported_down_and_clears_once_rescheduled(shared_any_cluster):
    ctx = shared_any_cluster
    replica = replicas(ctx)[0]
    lose_member(ctx, replica)  # its node is gone: the pod stays Pending
    try:
        result = health.health_pass(ctx)
        down = [a for a in result.assessment.alerts if a.kind == "member_down"]
        assert [a.details["member"] for a in down] == [replica] and down[0].severity == "warning"
        row = next(m for m in result.status.to_dict()["members"] if m["name"] == replica)
        assert row["role"] == "down" and row["storage_ratio"] is None  # no pod to exec into: unknown
    finally:
        recover_member(ctx, replica)
    deploy(ctx)  # waits for the pod, labels it for the Services
    wait_for(lambda: health.health_pass(ctx).assessment.alerts == [], "no alert once the pod runs again", timeout=60)
