"""The Kubernetes platform on the real control plane (pg_ops_tests/kube_cluster.py: real API
server, controllers and scheduler; stand-in nodes running real PostgreSQL members behind the
pods). The operations both platforms share run on both in test_deploy.py, test_failover.py and
test_kubernetes_paths.py; here is what only Kubernetes has: role labels and Services, the
credentials Secret, the state ConfigMap's compare-and-swap, pods deleted and recreated, and the
API's failures."""

from __future__ import annotations

import base64
import contextlib
import itertools
import os

import psycopg
import pytest
from kubernetes.client import Configuration

from pg_ops.credentials import PG_OPS_DATABASE, SUPERUSER
from pg_ops.errors import ConflictError, MemberError, PgOpsError
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.deploy import deploy, teardown
from pg_ops.operations.status import cluster_status
from pg_ops.platforms.base import MemberReport
from pg_ops.platforms.kubernetes import KubernetesPlatform
from pg_ops.platforms.kubernetes_api import KubernetesApi, KubernetesConflict, KubernetesError
from pg_ops.platforms.kubernetes_objects import ObjectClient
from pg_ops.postgres.session import with_connection
from pg_ops.render import manifests
from pg_ops.render import names as names
from pg_ops.spec import DatabaseSpec
from pg_ops.state import update_state
from pg_ops_tests.support.helpers import (
    free_port,
    home_environment,
    kill_member,
    real_kubernetes,
    spec_from,
    stop_cluster,
    wait_for,
    write_spec,
)

BACKUP_SECRET = "kube-backup-s3"
NAMESPACES = itertools.count(1)


def write_cluster_spec(folder, name: str, platform: str, **kubernetes):
    """One spec shape for both platforms; on Kubernetes a namespace per cluster (the primary
    Service name is the same for every cluster) and the manifests applied by pg_ops. The backup
    store's keys come from a Secret (not used for a backup here: the Role is what matters)."""
    folder.mkdir(exist_ok=True)
    k8s = {"namespace": f"ns-{name}-{next(NAMESPACES)}", "gitops": False, **kubernetes}
    store = {"type": "s3", "bucket": "b", "endpoint_url": "http://127.0.0.1:1", "credentials_secret": BACKUP_SECRET}
    return spec_from(write_spec(folder, name, platform=platform, kubernetes=k8s, backups={"store": store},
                                postgres={"parameters": {"shared_buffers": "128MB"}}))


@pytest.fixture(scope="module")
def fake():
    with real_kubernetes() as kube:
        yield kube


@contextlib.contextmanager
def deployed_cluster(fake, name: str, platform: str):
    with home_environment() as home:
        spec = write_cluster_spec(home / "specs", name, platform)
        if platform == "kubernetes":
            fake.register_cluster(spec)
        ctx = ClusterContext.for_spec(spec)
        try:
            deploy(ctx)
            yield ctx
        finally:
            if platform == "kubernetes":
                delete_statefulset(ctx, fake)
            else:
                stop_cluster(ctx)


def delete_statefulset(ctx, fake) -> None:
    """As an admin (Git owns the StatefulSet; pg_ops may not delete it): the fake deletes the
    pods (cascade) and stops their members."""
    platform = ctx.platform
    with contextlib.suppress(Exception):
        fake.admin_api().apps.delete_namespaced_stateful_set(names.statefulset_name(ctx.spec), platform.namespace)
    with contextlib.suppress(Exception):
        wait_for(lambda: not platform.member_pods(), "pods deleted", timeout=60)


@pytest.fixture(scope="module")
def k8s(fake):
    with deployed_cluster(fake, "kube", "kubernetes") as ctx:
        yield ctx


def sql(ctx, member, query, dbname="postgres"):
    def run(conn):
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else None
    return with_connection(ctx.endpoints()[member], SUPERUSER, ctx.admin_password(), run, dbname=dbname, timeout=10)


def replicas_of(ctx) -> list[str]:
    return [m for m in ctx.spec.member_names if m != ctx.state().primary]


def wait_streaming(ctx, member: str) -> None:
    wait_for(lambda: ctx.probe([member])[member].streaming, f"{member} streaming", timeout=90)


# -- Kubernetes only ----------------------------------------------------------------------------------
def test_role_labels_route_the_primary_and_read_services(k8s, fake):
    ns, primary = k8s.platform.namespace, k8s.state().primary
    roles = {m: fake.pod_labels(ns, m).get(names.LABEL_ROLE) for m in k8s.spec.member_names}
    assert roles == {m: ("primary" if m == primary else "replica") for m in k8s.spec.member_names}
    password = k8s.admin_password()

    def reached(service: str) -> tuple[str, bool]:
        port = fake.service_port(ns, service)
        with psycopg.connect(host="127.0.0.1", port=port, user=SUPERUSER, dbname="postgres", password=password,
                             connect_timeout=3) as conn:
            return conn.execute("select current_setting('cluster_name'), pg_is_in_recovery()").fetchone()

    assert reached(names.primary_service(k8s.spec)) == (primary, False)
    member, in_recovery = reached(names.replicas_service(k8s.spec))
    assert member in replicas_of(k8s) and in_recovery


def secret_data(ctx) -> dict[str, str]:
    secret = ctx.platform.api.core.read_namespaced_secret(names.credentials_secret(ctx.spec), ctx.platform.namespace)
    return {k: base64.b64decode(v).decode() for k, v in secret.data.items()}


def test_credentials_secret_is_never_overwritten(k8s):
    before = secret_data(k8s)
    assert {names.password_key(r) for r in ("postgres", "replicator", "app")} <= set(before)
    passfile = before[names.PASSFILE_KEY]
    assert f":postgres:{before[names.password_key('postgres')]}" in passfile and ":replicator:" in passfile
    assert deploy(k8s).started == []
    assert secret_data(k8s) == before
    # A role the spec gains is added; nothing that exists changes.
    grown = k8s.spec.model_copy(
        update={"databases": [*k8s.spec.databases, DatabaseSpec(name="rep", owner="reporting")]})
    creds = KubernetesPlatform(grown).ensure_credentials()
    after = secret_data(k8s)
    assert {k: after[k] for k in before} == before
    assert after[names.password_key("reporting")] == creds.password("reporting")


def test_backup_store_keys_come_from_the_secret_the_spec_names_and_only_that_one(k8s, fake):
    """The backup-credentials story end to end: the spec names the Secret, the rendered Role
    lets pg_ops `get` exactly that one in the cluster's namespace (where the backend reads it),
    any other Secret is refused with the API server's 403."""
    ns = k8s.platform.namespace
    admin = fake.admin_api().core  # the Secrets are created out of band, as with kubectl
    encode = lambda v: base64.b64encode(v.encode()).decode()  # noqa: E731
    admin.create_namespaced_secret(ns, {"metadata": {"name": BACKUP_SECRET},
                                        "data": {"access_key": encode("AKID"), "secret_key": encode("s3cr3t")}})
    creds = k8s.platform.s3_credentials(BACKUP_SECRET)
    assert (creds.access_key, creds.secret_key) == ("AKID", "s3cr3t")
    assert "s3cr3t" not in repr(creds)
    admin.create_namespaced_secret(ns, {"metadata": {"name": "other-keys"}, "data": {"access_key": encode("AKID")}})
    with pytest.raises(KubernetesError) as refused:
        k8s.platform.s3_credentials("other-keys")
    assert refused.value.status == 403 and "\n" not in str(refused.value)
    assert f'secrets "other-keys" is forbidden: User "system:serviceaccount:dagster:pg-ops" cannot get resource ' \
           f'"secrets" in API group "" in the namespace "{ns}"' in str(refused.value)
    admin.replace_namespaced_secret(BACKUP_SECRET, ns, {"metadata": {"name": BACKUP_SECRET},
                                                        "data": {"access_key": encode("AKID")}})
    with pytest.raises(PgOpsError, match=f"secret {ns}/{BACKUP_SECRET}: missing key\\(s\\) secret_key"):
        k8s.platform.s3_credentials(BACKUP_SECRET)


def test_state_configmap_compare_and_swap(k8s):
    store = k8s.platform.state_store()
    current = store.read()
    with pytest.raises(ConflictError, match="changed concurrently"):
        store.write(current, current.version - 1)
    # A writer between our read and our write: the resourceVersion makes the API answer 409.
    api = k8s.platform.api
    stale = api.core.read_namespaced_config_map(store.name, store.namespace)
    update_state(store, lambda s: s.model_copy(update={"observed_at": s.observed_at + 1}))  # another writer
    stale.data = {names.STATE_KEY: current.to_text()}
    with pytest.raises(KubernetesConflict, match=f"update configmap {store.namespace}/{store.name}: conflict"):
        api.call("update", store.what, api.core.replace_namespaced_config_map, store.name, store.namespace, stale)
    # update_state retries a lost race and keeps both changes.
    raced = []

    class RacedStore(type(store)):
        def write(self, new, expected_version):
            if not raced:
                raced.append(True)
                update_state(store, lambda s: s.model_copy(update={"fenced": ("someone-else",)}))
            return super().write(new, expected_version)

    result = update_state(RacedStore(api, k8s.spec), lambda s: s.model_copy(update={"observed_at": s.observed_at + 1}))
    assert raced and result.fenced == ("someone-else",) and store.read().version == result.version
    update_state(store, lambda s: s.model_copy(update={"fenced": ()}))


def test_rbac_forbidden_is_one_clear_line(k8s, fake):
    store = k8s.platform.state_store()
    fake.forbid("update", "configmaps", store.name)
    try:
        with pytest.raises(KubernetesError) as exc:  # a real change (a no-op change writes nothing)
            update_state(store, lambda s: s.model_copy(update={"observed_at": s.observed_at + 1}))
        assert str(exc.value).startswith(f"kubernetes: update configmap {store.namespace}/{store.name}: "
                                         f"forbidden (403): ")
        assert exc.value.status == 403
    finally:
        fake.clear_denials()


def test_unreachable_api_server_is_one_clear_line(k8s):
    dead = Configuration(host=f"http://127.0.0.1:{free_port()}")
    platform = KubernetesPlatform(k8s.spec, api=KubernetesApi(dead))
    with pytest.raises(KubernetesError, match=rf"kubernetes: list pods in {platform.namespace} .*: API server "
                                              rf"http://127.0.0.1:\d+ unreachable"):
        platform.member_endpoints()


def test_no_kubeconfig_and_not_in_a_pod(k8s, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(PgOpsError, match="kubernetes: no kubeconfig and not in a pod: /nonexistent/kubeconfig"):
        KubernetesPlatform(k8s.spec).state_store().read()


def test_apply_conflict_with_another_field_manager(k8s, fake):
    api = fake.admin_api()  # field ownership, not RBAC: both appliers may write
    ns = k8s.platform.namespace
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned-elsewhere", "namespace": ns},
           "data": {"k": "argocd"}}
    api.core.patch_namespaced_config_map("owned-elsewhere", ns, obj, field_manager="argocd-controller",
                                         _content_type="application/apply-patch+yaml")
    obj["data"] = {"k": "pg-ops"}
    with pytest.raises(KubernetesConflict) as exc:
        ObjectClient(api).apply(obj, force=False)
    assert str(exc.value).startswith(f"kubernetes: apply configmap {ns}/owned-elsewhere: conflict (409): ")
    assert 'conflict with "argocd-controller": .data.k' in str(exc.value)
    ObjectClient(api).apply(obj)  # pg_ops applies with force: it owns the Git-owned objects then
    assert api.core.read_namespaced_config_map("owned-elsewhere", ns).data == {"k": "pg-ops"}


def test_gitops_cluster_only_checks_the_git_owned_objects(k8s, fake):
    spec = k8s.spec.model_copy(update={"kubernetes": k8s.spec.kubernetes.model_copy(update={"gitops": True})})
    ns = spec.kubernetes.namespace
    budget = next(o for o in manifests(spec) if o["kind"] == "PodDisruptionBudget")
    name = budget["metadata"]["name"]
    fake.admin_api().custom.delete_namespaced_custom_object("policy", "v1", ns, "poddisruptionbudgets", name)
    try:
        with pytest.raises(PgOpsError, match=f"missing \\(poddisruptionbudget {ns}/{name}\\); sync the GitOps"):
            KubernetesPlatform(spec).prepare(k8s.state())
        assert not ObjectClient(k8s.platform.api).exists(budget)  # verified, never applied
    finally:
        k8s.platform.prepare(k8s.state())  # gitops: false puts it back
    KubernetesPlatform(spec).prepare(k8s.state())  # the rendered objects all exist


def test_member_log_tail_reads_the_pod_log(k8s):
    assert "supervisor started" in k8s.platform.member_log_tail(k8s.state().primary, lines=1000)
    # The Role names the members' pods: any other pod's log is refused.
    with pytest.raises(KubernetesError, match=r'forbidden \(403\): pods "kube-9" is forbidden: .* cannot get '
                                              r'resource "pods/log"'):
        k8s.platform.member_log_tail("kube-9")


def test_teardown_is_refused(k8s):
    with pytest.raises(PgOpsError, match="teardown is for local clusters only"):
        teardown(k8s)


def test_killed_pod_is_recreated_and_relabelled(k8s, fake):
    ns, replica = k8s.platform.namespace, replicas_of(k8s)[0]
    uid = fake.object("pods", ns, replica)["metadata"]["uid"]
    kill_member(k8s.platform, replica)
    wait_for(lambda: k8s.platform.member_running(replica), f"{replica} recreated and running")
    assert fake.object("pods", ns, replica)["metadata"]["uid"] != uid
    assert names.LABEL_ROLE not in fake.pod_labels(ns, replica)  # the window until pg_ops re-labels
    k8s.platform.route_primary(k8s.state().primary)
    assert fake.pod_labels(ns, replica)[names.LABEL_ROLE] == "replica"
    wait_streaming(k8s, replica)


def test_wiped_member_is_recloned_not_reinitialised(k8s, fake):
    ns, primary, replica = k8s.platform.namespace, k8s.state().primary, replicas_of(k8s)[1]
    sql(k8s, primary, "create table if not exists keep (v int); insert into keep values (42)", PG_OPS_DATABASE)
    claim = f"data-{replica}"
    claim_uid = fake.object("persistentvolumeclaims", ns, claim)["metadata"]["uid"]
    k8s.platform.wipe_member(replica)
    wait_for(lambda: (fake.object("persistentvolumeclaims", ns, claim) or {}).get("metadata", {}).get("uid")
             not in (None, claim_uid), "a new PVC")
    wait_streaming(k8s, replica)
    assert sql(k8s, replica, "select system_identifier::text from pg_control_system()")[0][0] == \
        k8s.state().system_identifier
    assert (42,) in sql(k8s, replica, "select v from keep", PG_OPS_DATABASE)
    assert "cloning from primary" in k8s.platform.member_log_tail(replica, lines=1000)
    report = k8s.platform.member_report(replica)  # read through an exec into the pod
    assert (report.boot_action, report.boot_reason) == ("clone", f"from {primary}")


def test_fenced_member_leaves_the_services_and_its_pod_is_deleted(k8s, fake):
    ns, replica = k8s.platform.namespace, replicas_of(k8s)[0]
    uid = fake.object("pods", ns, replica)["metadata"]["uid"]
    k8s.platform.fence_member(replica)
    pod = fake.object("pods", ns, replica)
    assert pod is None or pod["metadata"]["uid"] != uid
    wait_for(lambda: k8s.platform.member_running(replica), f"{replica} recreated")
    assert names.LABEL_ROLE not in fake.pod_labels(ns, replica)
    k8s.platform.route_primary(k8s.state().primary)
    wait_streaming(k8s, replica)


def test_pod_stuck_pending_is_reported_and_shown_down(k8s, fake):
    ns, replica = k8s.platform.namespace, replicas_of(k8s)[1]
    fake.hold_pending(ns, replica)
    try:
        kill_member(k8s.platform, replica)
        k8s.platform.pod_start_timeout = 1.0
        with pytest.raises(MemberError, match=rf"kubernetes: pod {ns}/{replica} stuck Pending after 1 s: "
                                              rf"Unschedulable: 0/3 nodes are available"):
            k8s.platform.start_member(replica)
        roles = {m["name"]: m["role"] for m in cluster_status(k8s).to_dict()["members"]}
        assert roles[replica] == "down"
    finally:
        fake.release_pending(ns, replica)
        k8s.platform.pod_start_timeout = 180.0
    k8s.platform.start_member(replica)
    wait_streaming(k8s, replica)


def test_apply_that_fails_midway_says_what_was_applied(k8s, fake):
    spec = k8s.spec
    fake.forbid("patch", "statefulsets")
    try:
        with pytest.raises(KubernetesError) as exc:
            k8s.platform.prepare(k8s.state())
    finally:
        fake.clear_denials()
    message = str(exc.value)
    assert message.startswith(f"kubernetes: apply statefulset {spec.kubernetes.namespace}/{spec.name}: "
                              f"forbidden (403): ")
    assert f"applied before it: serviceaccount {spec.kubernetes.namespace}/" in message
    assert "not applied: " in message and exc.value.status == 403


def test_data_dir_usage_through_pod_exec(k8s, fake):
    ns, member = k8s.platform.namespace, k8s.state().primary
    used, total = k8s.platform.data_dir_usage(member)
    st = os.statvfs(fake.data_dir(ns, member))
    assert total == st.f_blocks * st.f_frsize  # df in the "pod" saw the member's volume
    assert 0 < used < total
    status = {m["name"]: m for m in cluster_status(k8s).to_dict()["members"]}
    assert status[member]["data_dir_total_bytes"] == total and status[member]["storage_ratio"] > 0
    with pytest.raises(KubernetesError, match=r'cannot get resource "pods/exec"'):
        k8s.platform.data_dir_usage("kube-9")  # not a member: the Role does not name it
    # A WebSocket exec is authorized as `get` on pods/exec (and from Kubernetes 1.35 also as
    # `create`): the Role grants both, and without them it is refused.
    fake.forbid("get", "pods/exec")
    fake.forbid("create", "pods/exec")
    try:
        with pytest.raises(KubernetesError, match=rf"kubernetes: exec in pod {ns}/{member}: forbidden \(403\): "
                                                  rf"pods \"{member}\" is forbidden: .* cannot (get|create) resource "
                                                  rf"\"pods/exec\""):
            k8s.platform.data_dir_usage(member)
    finally:
        fake.clear_denials()


def test_a_refusal_is_read_from_the_termination_message_while_the_container_waits(fake):
    """A member that refuses exits, and its container waits to restart (back-off): no exec reaches
    it, so its report file cannot be read. The refusal comes from the termination message the
    member script left, which the kubelet keeps in the pod status."""
    with deployed_cluster(fake, "refuse", "kubernetes") as ctx:
        primary = ctx.state().primary
        ctx.platform.wipe_member(primary)  # empty volume: the designated primary of a bootstrapped cluster
        seen = [MemberReport()]

        def refused() -> bool:
            # One read: a second one may fall between the container's exit and the status that
            # says so, when neither an exec nor a termination message reaches the report (empty).
            if ctx.platform.member_running(primary):
                return False
            seen[0] = ctx.platform.member_report(primary)
            return seen[0].boot_action == "refused"

        wait_for(refused, "the refusal while the container waits", timeout=90)
        assert "refusing initdb" in seen[0].boot_reason
        # and deploy says so at once, with the reason (not after the pod start timeout). The
        # container restarts with back-off, so deploy may catch it running and then see it exit
        # before it is writable: the same refusal either way.
        with pytest.raises(MemberError, match=f"member {primary} exited before it was (running|writable): it "
                                              "refused to start: designated primary .* refusing initdb"):
            deploy(ctx)


def test_failover_and_switchover_wait_for_the_service_to_follow_the_label(fake):
    """kube-proxy reprograms a Service's rules a while after its EndpointSlice changes (here: a
    change reaches the proxy 2 s after the label moved). The run's proof write through the primary
    Service waits, bounded, until the Service reaches the new primary, writing nothing through a
    connection that reached any other member. (It used to connect once right after the label
    moved, reach the old pod or nothing, and fail the run after the promotion.)"""
    from pg_ops.operations.failover import failover, switchover
    from pg_ops_tests.support.helpers import kill_member

    with deployed_cluster(fake, "svclag", "kubernetes") as ctx:
        fake.set_proxy_sync_period(2.0)
        old = ctx.state().primary
        new = next(m for m in ctx.spec.member_names if m != old)
        switchover(ctx, to=new)
        assert ctx.state().primary == new
        kill_member(ctx.platform, new)
        change = failover(ctx, force=True)
        assert change.new_primary != new and ctx.state().primary == change.new_primary

        ep = ctx.endpoints()[change.new_primary]
        row = with_connection(ep, SUPERUSER, ctx.admin_password(),
                              lambda c: c.execute("select epoch, writer from heartbeat where id = 1").fetchone(),
                              dbname=PG_OPS_DATABASE)
        assert row == (ctx.state().epoch, "failover")  # the proof write landed on the new primary
