"""The OpenTofu module deploy/terraform/modules/postgresql-cluster (issue 8), checked offline: its
HCL parsed with python-hcl2 (tools venv, `make tools`) against the homelab spec, the rendered
manifests it applies and the credentials layout the Kubernetes platform reads. No provider or API
server can run here: `tofu plan` is not exercised (the module README says so)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from pg_ops import settings
from pg_ops.credentials import MONITORING_USER, POOLER_USER, REPLICATION_USER, SUPERUSER, required_roles
from pg_ops.platforms.kubernetes import KubernetesPlatform
from pg_ops.platforms.kubernetes_state import owned_metadata
from pg_ops.postgres import pgbouncer
from pg_ops.render import names as k
from pg_ops.spec import load_spec
from pg_ops_tests.support.manifest_checks import documents, tool

REPO = settings.REPO_ROOT
MODULE = REPO / "deploy" / "terraform" / "modules" / "postgresql-cluster"
HOMELAB = load_spec(REPO / "deploy" / "clusters" / "homelab.yaml")
TF_FILES = ("versions.tf", "variables.tf", "main.tf", "secrets.tf", "outputs.tf")
REFERENCE = re.compile(r"\$\{((?:var|local)\.[A-Za-z0-9_.]+)\}")


@pytest.fixture(scope="module")
def hcl() -> dict[str, dict]:
    """{file: python-hcl2's dict of it}, parsed in the tools venv (python-hcl2 pins its own lark)."""
    script = ("import hcl2, json, sys\n"
              "out = {}\n"
              "for path in sys.argv[1:]:\n"
              "    with open(path) as fh:\n"
              "        out[path.rsplit('/', 1)[1]] = hcl2.load(fh)\n"
              "print(json.dumps(out))\n")
    done = subprocess.run([str(tool("python")), "-c", script, *(str(MODULE / f) for f in TF_FILES)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def blocks(parsed: dict, kind: str) -> dict:
    """variable/output blocks: {name: body}."""
    return {name: body for block in parsed.get(kind, []) for name, body in block.items()}


def variables(hcl) -> dict:
    return blocks(hcl["variables.tf"], "variable")


def defaults(hcl) -> dict:
    return {name: body["default"][0] for name, body in variables(hcl).items() if "default" in body}


def module_locals(hcl) -> dict:
    return {name: value[0] for parsed in hcl.values() for block in parsed.get("locals", [])
            for name, value in block.items() if not name.startswith("__")}


def resource(hcl, file: str, kind: str, name: str) -> dict:
    return next(block[kind][name] for block in hcl[file]["resource"] if kind in block)


def evaluate(template: str, hcl, extra: dict | None = None) -> str:
    """Evaluate a string template made only of text and ${var.x[.y]} / ${local.z} references,
    with the variables' defaults: what OpenTofu computes for the homelab cluster."""
    values = {"var": defaults(hcl), "local": module_locals(hcl), **(extra or {})}

    def lookup(match: re.Match) -> str:
        scope, *path = match.group(1).split(".")
        value = values[scope]
        for part in path:
            value = value[part]
        assert isinstance(value, str | int), f"{match.group(0)} is not a plain value: {value!r}"
        return evaluate(str(value), hcl, extra)

    result = REFERENCE.sub(lookup, template)
    assert "${" not in result, f"cannot evaluate {template!r} offline"
    return result


# -- variables: the homelab spec ----------------------------------------------------------------
def test_variable_defaults_are_the_homelab_spec(hcl):
    d = defaults(hcl)
    kube = HOMELAB.kubernetes
    assert d["cluster_name"] == HOMELAB.name == "homelab"
    assert d["namespace"] == kube.namespace == "postgresql"
    assert d["drill_namespace"] == k.drill_namespace(HOMELAB) == "postgresql-drills"
    assert d["storage"] == kube.storage == "50Gi"
    assert d["primary_service"] == {"name": kube.services.primary.name, "port": kube.services.primary.port}
    assert d["primary_service"] == {"name": "postgres-ha-postgresql", "port": 5432}
    assert kube.services.external.type == "LoadBalancer"
    assert d["load_balancer_ip"] == kube.services.external.ip == "192.168.10.100"
    assert d["load_balancer_source_ranges"] == kube.services.external.source_ranges == ["192.168.10.0/24"]
    assert d["tls_enabled"] is (kube.tls_secret is not None)
    assert d["databases"] == [{"name": db.name, "owner": db.owner} for db in HOMELAB.databases]
    assert d["pooler_enabled"] is (HOMELAB.pooler is not None)
    assert d["manifests_dir"] is None  # -> the repository's deploy/kubernetes/<cluster_name>


def test_every_variable_is_described_and_typed(hcl):
    for name, body in variables(hcl).items():
        assert body.get("description", [""])[0].strip(), f"variable {name} has no description"
        assert "type" in body, f"variable {name} has no type"


def test_default_manifests_dir_is_the_rendered_folder(hcl):
    template = module_locals(hcl)["manifests_dir"]
    default_dir = re.search(r'"(\$\{path\.module\}[^"]*)"', template).group(1)
    folder = evaluate(default_dir.replace("${path.module}", str(MODULE)), hcl)
    assert Path(folder).resolve() == (REPO / "deploy" / "kubernetes" / HOMELAB.name).resolve()
    assert (Path(folder) / "kustomization.yaml").exists()


# -- main.tf: what it applies, and its preconditions hold for the committed render -----------------
def rendered_objects() -> list[dict]:
    folder = REPO / "deploy" / "kubernetes" / HOMELAB.name
    files = documents(folder / "kustomization.yaml")[0]["resources"]
    return [obj for name in files for obj in documents(folder / name)]


def test_the_rendered_files_satisfy_the_modules_preconditions(hcl):
    """The Python twin of main.tf's preconditions, on the committed render and the defaults: a
    re-rendered spec that moved (namespace, size, address…) without the module's defaults fails."""
    d = defaults(hcl)
    objects = rendered_objects()
    assert objects and all(o["metadata"]["namespace"] in (d["namespace"], d["drill_namespace"])
                           for o in objects)
    # Only the drill Role, its binding and the drill pods' NetworkPolicy live in the drill
    # namespace: nothing there for a drill pod to mount.
    assert sorted(o["kind"] for o in objects if o["metadata"]["namespace"] == d["drill_namespace"]) == [
        "NetworkPolicy", "Role", "RoleBinding"]
    statefulset, = [o for o in objects if o["kind"] == "StatefulSet"]
    assert statefulset["metadata"]["name"] == d["cluster_name"]
    assert statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == d["storage"]
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    primary = d["primary_service"]
    for name in (primary["name"], f"{primary['name']}-read"):
        assert services[name]["spec"]["ports"][0]["port"] == primary["port"]
    external = services[f"{primary['name']}-external"]
    assert external["metadata"]["annotations"]["metallb.io/loadBalancerIPs"] == d["load_balancer_ip"]
    assert external["spec"]["loadBalancerSourceRanges"] == d["load_balancer_source_ranges"]
    # The same names as the platform uses, so the preconditions check the right objects.
    assert {primary["name"], f"{primary['name']}-read", f"{primary['name']}-external"} == {
        k.primary_service(HOMELAB), k.replicas_service(HOMELAB), k.external_service(HOMELAB)}


def test_main_applies_every_rendered_file_through_kubernetes_manifest(hcl):
    text = (MODULE / "main.tf").read_text()
    assert "provider::kubernetes::manifest_decode_multi" in text  # multi-document files as they are
    assert "kustomization.yaml" in text
    manifest = resource(hcl, "main.tf", "kubernetes_manifest", "rendered")
    assert manifest["for_each"] == ["${local.applied}"]
    assert manifest["field_manager"][0]["force_conflicts"] == [False]
    assert defaults(hcl)["field_manager"] not in {k.FIELD_MANAGER, "argocd-controller"}
    # Nothing pg_ops owns can reach it: the render never holds them (test_render checks that).
    kinds = {o["kind"] for o in rendered_objects()}
    assert "Secret" not in kinds
    assert k.state_configmap(HOMELAB) not in {o["metadata"]["name"] for o in rendered_objects()}
    lifecycle = resource(hcl, "main.tf", "terraform_data", "rendered_matches_variables")["lifecycle"][0]
    assert len(lifecycle["precondition"]) == 5


def test_providers_admit_the_versions_with_provider_functions(hcl):
    terraform = hcl["versions.tf"]["terraform"][0]
    assert terraform["required_version"][0] == ">= 1.7.0"  # OpenTofu 1.7: provider-defined functions
    providers = terraform["required_providers"][0]
    assert providers["kubernetes"][0]["source"] == "hashicorp/kubernetes"
    assert providers["kubernetes"][0]["version"].startswith(">= 2.28")  # manifest_decode_multi
    assert providers["random"][0]["source"] == "hashicorp/random"


# -- secrets.tf: the layout the Kubernetes platform reads --------------------------------------------
def test_credentials_secret_name_keys_and_labels_match_the_platform(hcl):
    secret = resource(hcl, "secrets.tf", "kubernetes_secret_v1", "credentials")
    meta = secret["metadata"][0]
    assert evaluate(meta["name"][0], hcl) == k.credentials_secret(HOMELAB)
    assert evaluate(meta["namespace"][0], hcl) == HOMELAB.kubernetes.namespace
    labels = {key: evaluate(value, hcl) for key, value in meta["labels"][0].items()}
    assert labels == owned_metadata(HOMELAB, "x")["labels"]
    assert k.LABEL_INSTANCE not in labels  # ArgoCD's label tracking would prune it
    loc = module_locals(hcl)
    assert (loc["superuser"], loc["replication_user"], loc["monitoring_user"]) == (
        SUPERUSER, REPLICATION_USER, MONITORING_USER)
    assert loc["passfile_key"] == k.PASSFILE_KEY
    assert re.search(r'"\$\{role\}-password"', loc["password_keys"])
    assert k.password_key("${role}") == "${role}-password"
    # Created once, then pg_ops's: OpenTofu never rewrites or deletes it.
    lifecycle = secret["lifecycle"][0]
    assert lifecycle["ignore_changes"][0] == ["${data}", "${metadata[0].labels}", "${metadata[0].annotations}"]
    assert lifecycle["prevent_destroy"] == [True]
    password = resource(hcl, "secrets.tf", "random_password", "role")
    assert password["special"] == [False] and password["length"][0] >= 24


def test_pg_ops_reads_the_secret_opentofu_writes(hcl):
    """Build the Secret's data as secrets.tf does (its roles, key names, passfile lines) and hand
    it to the platform's own reader: every role pg_ops needs comes back with its password."""
    owners = [db["owner"] for db in defaults(hcl)["databases"]]
    pooler = [POOLER_USER] if defaults(hcl)["pooler_enabled"] else []
    roles = list(dict.fromkeys([SUPERUSER, REPLICATION_USER, MONITORING_USER, *pooler, *owners]))
    passwords = {role: f"{role}PW0123456789abcdefghijklmnopqr" for role in roles}
    key_template = re.search(r'"(\$\{role\}-password)"', module_locals(hcl)["password_keys"]).group(1)
    data = {key_template.replace("${role}", role): pw for role, pw in passwords.items()}
    passfile = "".join(f"*:*:*:{role}:{passwords[role]}\n" for role in (SUPERUSER, REPLICATION_USER))
    data[module_locals(hcl)["passfile_key"]] = passfile
    line = re.search(r'=> "(\\"\$\{role\}.*?\\n)"', (MODULE / "secrets.tf").read_text()).group(1)
    if pooler:  # PgBouncer's auth-file line as its pods read it: exactly what pg_ops would write
        userlist = line.replace('\\"', '"').replace("\\n", "\n").replace("${role}", POOLER_USER) \
            .replace("${random_password.role[role].result}", passwords[POOLER_USER])
        assert userlist == pgbouncer.userlist(passwords[POOLER_USER])
        data[module_locals(hcl)["userlist_key"]] = userlist
        assert module_locals(hcl)["userlist_key"] == k.POOLER_USERLIST_KEY
    secret = SimpleNamespace(data={key: base64.b64encode(v.encode()).decode() for key, v in data.items()})
    creds = KubernetesPlatform.credentials_of(secret)
    assert sorted(creds.passwords) == sorted(required_roles(HOMELAB))
    assert all(creds.password(role) == passwords[role] for role in roles)
    template = re.search(r'"(\*:\*:\*:[^"]*)"', (MODULE / "secrets.tf").read_text()).group(1)
    assert template == "*:*:*:${role}:${random_password.role[role].result}\\n"
    assert creds.passfile_text([SUPERUSER, REPLICATION_USER]) == passfile


# -- outputs: connection endpoints ---------------------------------------------------------------
def test_outputs_are_the_connection_endpoints_of_the_spec(hcl):
    outputs = blocks(hcl["outputs.tf"], "output")
    assert {"primary_endpoint", "read_only_endpoint", "external_endpoint", "connection_uris",
            "credentials_secret"} <= set(outputs)
    primary = outputs["primary_endpoint"]["value"][0]
    ns = HOMELAB.kubernetes.namespace
    assert evaluate(primary["host"], hcl) == f"{k.primary_service(HOMELAB)}.{ns}.svc.cluster.local"
    assert evaluate(primary["host"], hcl) == "postgres-ha-postgresql.postgresql.svc.cluster.local"
    assert evaluate(primary["port"], hcl) == "5432"
    read_only = outputs["read_only_endpoint"]["value"][0]
    assert evaluate(read_only["host"], hcl) == f"{k.replicas_service(HOMELAB)}.{ns}.svc.cluster.local"
    external = outputs["external_endpoint"]["value"][0]
    assert "${var.load_balancer_ip}" in external and "${var.primary_service.port}" in external
    for name, body in outputs.items():
        assert body.get("description", [""])[0], f"output {name} has no description"
        assert "random_password" not in json.dumps(body), f"output {name} exposes a password"


def test_module_files_pass_fmt_check_when_a_binary_is_installed():
    binary = shutil.which("tofu") or shutil.which("terraform")
    if binary is None:
        pytest.skip("neither tofu nor terraform is installed (only python-hcl2 parsing ran)")
    done = subprocess.run([binary, "fmt", "-check", "-diff", str(MODULE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_readme_says_never_both_and_what_is_verified():
    text = (MODULE / "README.md").read_text()
    assert "never both" in text and "Verified here" in text
