"""The drift check of a Kubernetes cluster's Git-owned objects, on the real API server (its own
defaulting, canonical quantities and controllers' status writes):
the objects pg_ops applied match; a changed image, a changed Service port and a deleted object
are each named with the field; server-populated and defaulted fields never count. No
PostgreSQL is needed: the credentials Secret does not exist, so the pods wait for it."""

from __future__ import annotations

import dagster as dg
import pytest

from pg_ops.defs import drift as drift_defs
from pg_ops.defs.resources import PgOpsResource
from pg_ops.errors import PgOpsError
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.drift import ABSENT, check_drift, compare_fields
from pg_ops.render import manifests
from pg_ops.render import names as names
from pg_ops_tests.support.helpers import (
    home_environment,
    real_kubernetes,
    spec_from,
    wait_for,
    write_platform_spec,
)


@pytest.fixture(scope="module")
def applied():
    """A Kubernetes cluster whose Git-owned objects pg_ops applied (kubernetes.gitops: false)."""
    with home_environment() as home, real_kubernetes() as fake:
        spec_path = write_platform_spec(home / "specs", "drift", "kubernetes")
        ctx = ClusterContext.for_spec(spec_from(spec_path))
        fake.register_cluster(ctx.spec)  # the Role and RoleBinding, as an admin applies them
        ctx.platform.prepare(None)
        yield ctx, fake, spec_path


def rendered(ctx, kind: str, name: str) -> dict:
    return next(o for o in manifests(ctx.spec) if o["kind"] == kind and o["metadata"]["name"] == name)


def test_freshly_applied_objects_do_not_drift(applied):
    ctx, fake, _ = applied
    report = check_drift(ctx)
    assert report.passed, report.lines()
    assert len(report.checked) == len(manifests(ctx.spec)) and "StatefulSet/drift" in report.checked
    # What the server and controllers add is not drift: status, managedFields, resourceVersion,
    # defaulted fields (a Service's clusterIP, a port's protocol, a pod template's defaults) and
    # canonicalised quantities, all written by the real API server and controllers here.
    ns = ctx.platform.namespace
    wait_for(lambda: (fake.object("statefulsets", ns, "drift", "apps/v1").get("status") or {}).get("replicas") == 3,
             "the StatefulSet controller's status")
    assert fake.object("services", ns, names.primary_service(ctx.spec))["spec"]["clusterIP"]
    assert check_drift(ctx).passed, check_drift(ctx).lines()
    # A sidecar another manager injects into the pod template (a mesh, a log shipper): the real
    # server merges it beside pg_ops's containers, and it is not pg_ops's drift.
    fake.admin_api().custom.patch_namespaced_custom_object(
        "apps", "v1", ns, "statefulsets", "drift",
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "drift"},
         "spec": {"template": {"spec": {"containers": [{"name": "log-shipper", "image": "busybox:1.36"}]}}}},
        field_manager="mesh-injector", _content_type="application/apply-patch+yaml")
    live = fake.object("statefulsets", ns, "drift", "apps/v1")
    assert "log-shipper" in [c["name"] for c in live["spec"]["template"]["spec"]["containers"]]
    assert check_drift(ctx).passed, check_drift(ctx).lines()


def test_drifted_image_service_port_and_missing_object_are_named(applied):
    ctx, fake, _ = applied
    api, ns = fake.admin_api(), ctx.platform.namespace  # edits by hand, as with kubectl
    sts = rendered(ctx, "StatefulSet", "drift")
    index = next(i for i, c in enumerate(sts["spec"]["template"]["spec"]["containers"]) if c["name"] == names.CONTAINER)
    want_image = sts["spec"]["template"]["spec"]["containers"][index]["image"]
    # Someone edits the live objects by hand (kubectl edit / a hotfix) and deletes the PDB.
    live = api.apps.read_namespaced_stateful_set("drift", ns)
    live.spec.template.spec.containers[index].image = "postgres:16.3"
    api.apps.replace_namespaced_stateful_set("drift", ns, live, field_manager="kubectl-edit")
    service = names.primary_service(ctx.spec)
    api.core.patch_namespaced_service(service, ns, {"spec": {"ports": [{"name": "postgresql", "port": 5433,
                                                                        "targetPort": "postgresql",
                                                                        "protocol": "TCP"}]}},
                                      field_manager="kubectl-edit",
                                      _content_type="application/merge-patch+json")  # the list replaced
    pdb = next(o for o in manifests(ctx.spec) if o["kind"] == "PodDisruptionBudget")
    api.custom.delete_namespaced_custom_object("policy", "v1", ns, "poddisruptionbudgets", pdb["metadata"]["name"])

    report = check_drift(ctx)
    assert not report.passed
    lines = report.lines()
    assert f"StatefulSet/drift spec.template.spec.containers[{index}].image: live postgres:16.3, " \
           f"rendered {want_image}" in lines
    assert f"Service/{service} spec.ports[0].port: live 5433, rendered 5432" in lines
    assert f"PodDisruptionBudget/{pdb['metadata']['name']}: missing (rendered, not in the cluster)" in lines
    assert len(lines) == 3, lines  # nothing else is reported
    assert "PodDisruptionBudget" in report.summary() and "containers[" in report.summary()

    # The Dagster asset check fails with the same lines; re-applying clears the drift.
    evaluation = run_drift_check(applied)
    assert evaluation.passed is False
    assert "live postgres:16.3" in evaluation.metadata["drift"].value
    assert evaluation.metadata["drifted_fields"].value == 2 and evaluation.metadata["missing"].value == 1
    ctx.platform.prepare(None)
    assert check_drift(ctx).passed
    assert run_drift_check(applied).passed is True


def run_drift_check(applied):
    ctx, _, spec_path = applied
    defs = dg.Definitions.merge(drift_defs.build([ctx.spec]),
                                dg.Definitions(resources={"pg_ops": PgOpsResource(clusters_path=str(spec_path))}))
    with dg.instance_for_test() as instance:
        # The same job checks the roles and databases (catalog/<cluster>), which fails here: this
        # cluster's objects are applied, its members never deployed.
        result = defs.resolve_job_def(drift_defs.JOB_NAME).execute_in_process(instance=instance, raise_on_error=False)
    [evaluation] = [e for e in result.get_asset_check_evaluations()
                    if e.asset_key == drift_defs.git_owned_asset_key(ctx.name)]
    return evaluation


def test_compare_fields_only_what_the_manifest_sets():
    rendered_obj = {"spec": {"a": 1, "list": [{"name": "x", "port": 1}], "empty": {}, "unset": None}}
    live = {"spec": {"a": "1", "extra": True, "list": [{"name": "x", "port": 1, "protocol": "TCP"}]},
            "status": {"ready": 3}}
    assert compare_fields(rendered_obj, live) == []
    assert compare_fields({"l": [1, 2]}, {"l": [1]}) == [("l", "1 items", "2 items")]
    # A list merged by key: an item another manager added is theirs (server-side apply keeps it),
    # the rendered ones are compared by key, wherever they are.
    mine = {"c": [{"name": "postgres", "image": "a"}]}
    assert compare_fields(mine, {"c": [{"name": "istio-proxy", "image": "x"},
                                       {"name": "postgres", "image": "a"}]}) == []
    assert compare_fields(mine, {"c": [{"name": "postgres", "image": "b"}]}) == [("c[0].image", "b", "a")]
    assert compare_fields(mine, {"c": [{"name": "other"}]}) == [("c[0]", ABSENT, {"name": "postgres", "image": "a"})]
    assert compare_fields({"m": {"k": "v"}}, {}) == [("m", ABSENT, {"k": "v"})]
    assert compare_fields({"m": {"k": "v"}}, {"m": {"k": "w"}}) == [("m.k", "w", "v")]


def test_drift_check_is_for_kubernetes_clusters(make_spec):
    with pytest.raises(PgOpsError, match="the drift check is for Kubernetes clusters"):
        check_drift(ClusterContext.for_spec(make_spec("loc")))
