"""The fake Kubernetes API server's semantics, through the official client (no PostgreSQL):
the behaviour the Kubernetes platform's tests rely on must be the real API's."""

import json
import time

import pytest
from kubernetes.client.exceptions import ApiException

from pg_ops.platforms.kubernetes_api import KubernetesApi
from pg_ops_tests.fake_k8s import FakeKubernetes
from pg_ops_tests.fake_k8s.rbac import PG_OPS_TOKEN
from pg_ops_tests.helpers import wait_for

NS = "fake-ns"
APPLY = "application/apply-patch+yaml"


@pytest.fixture(scope="module")
def fake():
    with FakeKubernetes() as server:
        yield server


@pytest.fixture(scope="module")
def api(fake):
    """A cluster admin's client (the objects here are planted, as with kubectl)."""
    return fake.admin_api()


@pytest.fixture(scope="module")
def pg_ops_api(fake):
    """pg_ops's own client: the kubeconfig's ServiceAccount token."""
    client = KubernetesApi()
    yield client
    client.close()


def status_of(exc: ApiException) -> dict:
    return json.loads(exc.body)


def test_label_selectors_equality_set_based_and_exists(api):
    core = api.core
    for name, labels in [("s-a", {"app": "pg", "role": "primary"}), ("s-b", {"app": "pg", "role": "replica"}),
                         ("s-c", {"app": "other"})]:
        core.create_namespaced_config_map(NS, {"metadata": {"name": name, "labels": labels}})

    def names(selector):
        return sorted(c.metadata.name for c in core.list_namespaced_config_map(NS, label_selector=selector).items
                      if c.metadata.name.startswith("s-"))

    assert names("app=pg") == ["s-a", "s-b"]
    assert names("app==pg,role!=primary") == ["s-b"]
    assert names("role in (primary, replica)") == ["s-a", "s-b"]
    assert names("app,role notin (replica)") == ["s-a", "s-c"]  # notin matches a missing key
    assert names("!role") == ["s-c"]
    assert names("") == ["s-a", "s-b", "s-c"]


def test_create_twice_is_409_already_exists_and_missing_is_404(api):
    api.core.create_namespaced_config_map(NS, {"metadata": {"name": "dup"}})
    with pytest.raises(ApiException) as exc:
        api.core.create_namespaced_config_map(NS, {"metadata": {"name": "dup"}})
    assert exc.value.status == 409 and status_of(exc.value)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as exc:
        api.core.read_namespaced_secret("nope", NS)
    body = status_of(exc.value)
    assert exc.value.status == 404 and body["reason"] == "NotFound" and body["kind"] == "Status"


def test_replace_with_a_stale_resource_version_is_409_conflict(api):
    first = api.core.create_namespaced_config_map(NS, {"metadata": {"name": "cas"}, "data": {"v": "1"}})
    stale = first.metadata.resource_version
    second = api.core.replace_namespaced_config_map(
        "cas", NS, {"metadata": {"name": "cas", "resourceVersion": stale}, "data": {"v": "2"}})
    assert int(second.metadata.resource_version) > int(stale)
    with pytest.raises(ApiException) as exc:
        api.core.replace_namespaced_config_map("cas", NS, {"metadata": {"name": "cas", "resourceVersion": stale},
                                                           "data": {"v": "3"}})
    assert exc.value.status == 409 and "the object has been modified" in status_of(exc.value)["message"]
    assert api.core.read_namespaced_config_map("cas", NS).data == {"v": "2"}


def test_strategic_merge_patch_of_labels_null_deletes(api):
    api.core.create_namespaced_config_map(NS, {"metadata": {"name": "lbl", "labels": {"a": "1", "b": "2"}}})
    patched = api.core.patch_namespaced_config_map("lbl", NS, {"metadata": {"labels": {"a": None, "c": "3"}}})
    assert patched.metadata.labels == {"b": "2", "c": "3"}


def sts(replicas: int, image: str = "postgres:16") -> dict:
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "ssa", "namespace": NS},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "ssa"}},
                     "template": {"metadata": {"labels": {"app": "ssa"}},
                                  "spec": {"containers": [{"name": "c", "image": image}]}}}}


def apply(api, obj: dict, manager: str, force: bool):
    return api.custom.patch_namespaced_custom_object("apps", "v1", NS, "statefulsets", obj["metadata"]["name"], obj,
                                                     field_manager=manager, force=force, _content_type=APPLY)


def test_server_side_apply_conflicts_with_another_manager_unless_forced(api):
    # Replicas 0: the fake's StatefulSet controller makes no pods (no PostgreSQL here).
    apply(api, sts(0), "argocd-controller", force=False)
    with pytest.raises(ApiException) as exc:
        apply(api, sts(0, image="postgres:17"), "pg-ops", force=False)
    body = status_of(exc.value)
    assert exc.value.status == 409 and body["reason"] == "Conflict"
    assert body["details"]["causes"][0]["field"] == ".spec.template.spec.containers"
    assert 'conflict with "argocd-controller"' in body["message"]
    # The same values are no conflict: both managers own them.
    apply(api, sts(0), "pg-ops", force=False)
    forced = apply(api, sts(0, image="postgres:17"), "pg-ops", force=True)
    assert forced["spec"]["template"]["spec"]["containers"][0]["image"] == "postgres:17"
    owners = {m["manager"]: m for m in forced["metadata"]["managedFields"]}
    assert "f:containers" in json.dumps(owners["pg-ops"]["fieldsV1"])
    assert "f:containers" not in json.dumps(owners["argocd-controller"]["fieldsV1"])


def test_apply_removes_fields_the_manager_stopped_sending(api):
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "drop", "namespace": NS},
           "data": {"keep": "1", "gone": "2"}}
    api.core.patch_namespaced_config_map("drop", NS, obj, field_manager="pg-ops", force=True, _content_type=APPLY)
    obj["data"] = {"keep": "1"}
    after = api.core.patch_namespaced_config_map("drop", NS, obj, field_manager="pg-ops", force=True,
                                                 _content_type=APPLY)
    assert after.data == {"keep": "1"}


def test_forbidden_switch_answers_403_like_rbac(fake, api):
    fake.forbid("list", "pods")
    try:
        api.core.list_namespaced_pod(NS)  # an admin is never denied
        with pytest.raises(ApiException) as exc:
            KubernetesApi(_pg_ops_config(fake, api)).core.list_namespaced_pod(NS)
        assert exc.value.status == 403
        assert 'cannot list resource "pods" in API group "" in the namespace "fake-ns"' in status_of(exc.value)["message"]
    finally:
        fake.clear_denials()


def _pg_ops_config(fake, api):
    cfg = api.configuration.__class__(host=fake.url, api_key={"authorization": PG_OPS_TOKEN},
                                      api_key_prefix={"authorization": "Bearer"})
    return cfg


def test_statefulset_pod_waits_pending_for_a_missing_secret(fake, api):
    obj = sts(1)
    obj["metadata"]["name"] = "nosecret"
    obj["spec"]["template"]["spec"]["volumes"] = [{"name": "credentials", "secret": {"secretName": "absent"}}]
    obj["spec"]["template"]["spec"]["containers"][0].update(
        name="postgres", volumeMounts=[{"name": "credentials", "mountPath": "/etc/pg-ops/secret"}],
        ports=[{"name": "postgresql", "containerPort": 5432}])
    obj["spec"]["volumeClaimTemplates"] = [{"metadata": {"name": "data"}, "spec": {}}]
    apply(api, obj, "pg-ops", force=True)
    pod = wait_for(lambda: api.core.read_namespaced_pod("nosecret-0", NS), "pod nosecret-0 created")
    assert pod.metadata.owner_references[0].name == "nosecret"
    assert api.core.read_namespaced_persistent_volume_claim("data-nosecret-0", NS).metadata.name == "data-nosecret-0"
    time.sleep(0.5)  # several controller rounds: it must still be Pending, saying why
    pod = api.core.read_namespaced_pod("nosecret-0", NS)
    assert pod.status.phase == "Pending"
    assert 'secret "absent" not found' in pod.status.container_statuses[0].state.waiting.message
    api.apps.delete_namespaced_stateful_set("nosecret", NS)
    wait_for(lambda: not api.core.list_namespaced_pod(NS, label_selector="app=ssa").items, "pods cascade-deleted")
