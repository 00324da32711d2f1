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


# -- authentication and RBAC -----------------------------------------------------------------------
def pg_ops_client(fake) -> KubernetesApi:
    return KubernetesApi(_pg_ops_config(fake, fake.admin_api()))


def test_rbac_follows_the_roles_and_bindings_in_the_store(fake, api):
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "reader", "namespace": NS},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["mine"]},
                      {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "reader", "namespace": NS},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
               "subjects": [{"kind": "ServiceAccount", "name": "pg-ops", "namespace": "dagster"}]}
    for obj in (role, binding):
        api.custom.create_namespaced_custom_object("rbac.authorization.k8s.io", "v1", NS, obj["kind"].lower() + "s",
                                                   obj)
    for name in ("mine", "theirs"):
        api.core.create_namespaced_config_map(NS, {"metadata": {"name": name}})
    client = pg_ops_client(fake)
    assert client.core.read_namespaced_config_map("mine", NS).metadata.name == "mine"  # resourceNames match
    refusals = {
        "get another object": lambda: client.core.read_namespaced_config_map("theirs", NS),
        "list (resourceNames never match a list)": lambda: client.core.list_namespaced_config_map(NS),
        "another verb": lambda: client.core.patch_namespaced_config_map("mine", NS, {"data": {"a": "b"}}),
        "another namespace": lambda: client.core.read_namespaced_config_map("mine", "elsewhere"),
    }
    for what, call in refusals.items():
        with pytest.raises(ApiException) as exc:
            call()
        assert exc.value.status == 403, what
        body = status_of(exc.value)
        assert body["reason"] == "Forbidden" and body["kind"] == "Status" and body["code"] == 403, what
        assert 'User "system:serviceaccount:dagster:pg-ops" cannot' in body["message"], what
    with pytest.raises(ApiException) as exc:
        client.core.read_namespaced_config_map("theirs", NS)
    assert status_of(exc.value)["message"] == ('configmaps "theirs" is forbidden: User "system:serviceaccount:dagster:'
                                               'pg-ops" cannot get resource "configmaps" in API group "" in the '
                                               f'namespace "{NS}"')
    assert status_of(exc.value)["details"] == {"name": "theirs", "kind": "configmaps"}
    # No token at all: 401.
    from kubernetes.client import Configuration

    with pytest.raises(ApiException) as exc:
        KubernetesApi(Configuration(host=fake.url)).core.read_namespaced_config_map("mine", NS)
    assert exc.value.status == 401


def test_an_apply_that_creates_needs_create(fake, api):
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "patcher", "namespace": NS},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"],
                       "resourceNames": ["applied"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "patcher", "namespace": NS},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "patcher"},
               "subjects": [{"kind": "ServiceAccount", "name": "pg-ops", "namespace": "dagster"}]}
    for obj in (role, binding):
        api.custom.create_namespaced_custom_object("rbac.authorization.k8s.io", "v1", NS, obj["kind"].lower() + "s",
                                                   obj)
    client = pg_ops_client(fake)
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied", "namespace": NS}, "data": {"a": "1"}}
    with pytest.raises(ApiException) as exc:
        client.core.patch_namespaced_config_map("applied", NS, cm, field_manager="pg-ops", _content_type=APPLY)
    assert exc.value.status == 403 and 'cannot create resource "configmaps"' in status_of(exc.value)["message"]
    api.core.create_namespaced_config_map(NS, {"metadata": {"name": "applied"}})
    client.core.patch_namespaced_config_map("applied", NS, cm, field_manager="pg-ops", _content_type=APPLY)


# -- the scheduler ----------------------------------------------------------------------------------
def member_pod(name: str, affinity: str, node: str | None = None) -> dict:
    app = f"spread-{affinity}"  # one workload per rule: anti-affinity is symmetric in a real scheduler
    term = {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "kubernetes.io/hostname"}
    anti = ({"requiredDuringSchedulingIgnoredDuringExecution": [term]} if affinity == "required" else
            {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]})
    spec = {"containers": [{"name": "c", "image": "busybox"}], "affinity": {"podAntiAffinity": anti}}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "labels": {"app": app}}, "spec": spec}


def test_anti_affinity_with_one_cordoned_node_of_three(fake, api):
    """Two members run on node-0 and node-1, node-2 is cordoned: a third member with required
    anti-affinity stays Pending, saying why; with preferred it shares a node."""
    for rule in ("required", "preferred"):
        for i in (0, 1):
            api.core.create_namespaced_pod(NS, member_pod(f"{rule}-{i}", rule, f"node-{i}"))
    fake.cordon("node-2")
    try:
        api.core.create_namespaced_pod(NS, member_pod("spread-hard", "required"))
        pod = wait_for(lambda: (p := api.core.read_namespaced_pod("spread-hard", NS)).status.conditions and p,
                       "the scheduler's verdict")
        condition = pod.status.conditions[0]
        assert (pod.spec.node_name, condition.type, condition.status, condition.reason) == \
            (None, "PodScheduled", "False", "Unschedulable")
        assert condition.message == ("0/3 nodes are available: 2 node(s) didn't match pod anti-affinity rules, "
                                     "1 node(s) were unschedulable.")
        api.core.create_namespaced_pod(NS, member_pod("spread-soft", "preferred"))
        node = wait_for(lambda: api.core.read_namespaced_pod("spread-soft", NS).spec.node_name, "spread-soft placed")
        assert node in ("node-0", "node-1")
    finally:
        fake.cordon("node-2", False)
    node = wait_for(lambda: api.core.read_namespaced_pod("spread-hard", NS).spec.node_name, "spread-hard placed")
    assert node == "node-2"  # uncordoned: the hard rule is satisfiable again


def test_node_local_claim_pins_its_pod_to_the_node(fake, api):
    api.core.create_namespaced_persistent_volume_claim(NS, {"metadata": {"name": "pinned"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    api.core.patch_namespaced_persistent_volume_claim("pinned", NS, {"metadata": {"annotations": {
        "volume.kubernetes.io/selected-node": "node-1"}}})
    pod = {"metadata": {"name": "uses-pinned"}, "spec": {
        "containers": [{"name": "c", "image": "busybox"}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "pinned"}}]}}
    api.core.create_namespaced_pod(NS, pod)
    assert wait_for(lambda: api.core.read_namespaced_pod("uses-pinned", NS).spec.node_name, "placed") == "node-1"


# -- the StatefulSet controller: OnDelete vs RollingUpdate ---------------------------------------------
def test_on_delete_never_replaces_a_pod_rolling_update_does(fake, api):
    for strategy in ("OnDelete", "RollingUpdate"):
        name = f"up-{strategy.lower()}"
        obj = sts(1)
        obj["metadata"]["name"] = name
        obj["spec"]["selector"] = {"matchLabels": {"app": name}}
        obj["spec"]["template"]["metadata"] = {"labels": {"app": name}, "annotations": {"rev": "1"}}
        obj["spec"]["updateStrategy"] = {"type": strategy}
        apply(api, obj, "argocd", force=True)
        first = wait_for(lambda n=name: api.core.read_namespaced_pod(f"{n}-0", NS), f"{name}-0 created")
        wait_for(lambda n=name: any(c.type == "Ready" and c.status == "True"
                                    for c in api.core.read_namespaced_pod(f"{n}-0", NS).status.conditions or []),
                 f"{name}-0 ready")
        obj["spec"]["template"]["metadata"]["annotations"] = {"rev": "2"}
        apply(api, obj, "argocd", force=True)
        if strategy == "OnDelete":
            status = wait_for(lambda n=name: (s := api.apps.read_namespaced_stateful_set(n, NS).status)
                              and s.update_revision != s.current_revision and s, "a new revision")
            time.sleep(1)  # many controller rounds: the pod must still be the first one
            pod = api.core.read_namespaced_pod(f"{name}-0", NS)
            assert pod.metadata.uid == first.metadata.uid and pod.metadata.annotations == {"rev": "1"}
            assert status.updated_replicas == 0
        else:
            pod = wait_for(lambda n=name, uid=first.metadata.uid: (p := api.core.read_namespaced_pod(f"{n}-0", NS))
                           and p.metadata.uid != uid and p, "the pod replaced")
            assert pod.metadata.annotations == {"rev": "2"}


# -- evictions (kubectl drain) -------------------------------------------------------------------------
def test_eviction_respects_the_disruption_budget(fake, api):
    labels = {"app": "evict"}
    for i in range(2):
        api.core.create_namespaced_pod(NS, {"metadata": {"name": f"evict-{i}", "labels": labels},
                                            "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    for i in range(2):
        wait_for(lambda i=i: any(c.type == "Ready" and c.status == "True"
                                 for c in api.core.read_namespaced_pod(f"evict-{i}", NS).status.conditions or []),
                 f"evict-{i} ready")
    api.custom.create_namespaced_custom_object("policy", "v1", NS, "poddisruptionbudgets", {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "evict"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": labels}}})
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "evict-0", "namespace": NS}}
    with pytest.raises(ApiException) as exc:
        api.core.create_namespaced_pod_eviction("evict-0", NS, eviction)
    body = status_of(exc.value)
    assert exc.value.status == 429 and body["message"] == "Cannot evict pod as it would violate the pod's disruption budget."
    assert body["details"]["causes"][0]["message"] == "The disruption budget evict needs 2 healthy pods and has 2 currently"
    api.custom.patch_namespaced_custom_object("policy", "v1", NS, "poddisruptionbudgets", "evict",
                                              {"spec": {"minAvailable": 1}})
    api.core.create_namespaced_pod_eviction("evict-0", NS, eviction)
    wait_for(lambda: not [p for p in api.core.list_namespaced_pod(NS, label_selector="app=evict").items
                          if p.metadata.name == "evict-0"], "evict-0 gone")


def test_eviction_counts_max_unavailable_against_the_statefulset_as_the_real_controller(fake, api):
    """The disruption controller's expected count for `maxUnavailable` is the controller's scale
    (the StatefulSet's 3), not the 2 pods a replica-only budget selects: no eviction is allowed.
    An integer minAvailable counts the pods selected (test_control_plane.py shows both on the
    real controller)."""
    obj = sts(3)
    obj["metadata"]["name"] = "budget"
    obj["spec"]["selector"] = {"matchLabels": {"app": "budget"}}
    obj["spec"]["template"]["metadata"] = {"labels": {"app": "budget"}}
    apply(api, obj, "argocd", force=True)
    for i in range(3):
        wait_for(lambda i=i: any(c.type == "Ready" and c.status == "True" for c in
                                 api.core.read_namespaced_pod(f"budget-{i}", NS).status.conditions or []),
                 f"budget-{i} ready")
    api.core.patch_namespaced_pod("budget-0", NS, {"metadata": {"labels": {"role": "primary"}}})
    selector = {"matchLabels": {"app": "budget"},
                "matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["primary"]}]}
    api.custom.create_namespaced_custom_object("policy", "v1", NS, "poddisruptionbudgets", {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "budget"},
        "spec": {"maxUnavailable": 1, "selector": selector}})
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "budget-1", "namespace": NS}}
    with pytest.raises(ApiException) as exc:
        api.core.create_namespaced_pod_eviction("budget-1", NS, eviction)
    assert exc.value.status == 429
    assert status_of(exc.value)["details"]["causes"][0]["message"] == \
        "The disruption budget budget needs 2 healthy pods and has 2 currently"
    api.custom.patch_namespaced_custom_object("policy", "v1", NS, "poddisruptionbudgets", "budget",
                                              {"spec": {"maxUnavailable": None, "minAvailable": 1}})
    api.core.create_namespaced_pod_eviction("budget-1", NS, eviction)
    api.custom.patch_namespaced_custom_object("apps", "v1", NS, "statefulsets", "budget", {"spec": {"replicas": 0}})
