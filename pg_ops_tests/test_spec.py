from pathlib import Path

import pytest

from pg_ops.errors import SpecError
from pg_ops.settings import REPO_ROOT
from pg_ops.spec import load_spec, load_specs, select_spec


def test_shipped_specs_load():
    specs = {s.name: s for s in load_specs(REPO_ROOT / "deploy" / "clusters")}
    local, homelab = specs["local"], specs["homelab"]
    assert local.platform == "local" and local.postgres.members == 3
    assert local.failover.mode == "automatic" and local.backups.store.type == "file"
    assert [d.name for d in local.databases] == ["app"]
    k = homelab.kubernetes
    assert homelab.platform == "kubernetes" and k.namespace == "postgresql" and k.image.endswith("/pg-ops-postgres:16-barman-3.19.1")
    assert (k.storage, k.resources.cpu, k.resources.memory) == ("50Gi", "2", "4Gi")
    assert (k.services.primary.name, k.services.primary.port) == ("postgres-ha-postgresql", 5432)
    assert k.services.external.ip == "192.168.10.100" and k.services.external.source_ranges == ["192.168.10.0/24"]
    assert homelab.failover.mode == "manual"
    assert homelab.backups.schedule == "0 2 * * *" and homelab.backups.retention_days == 7


@pytest.mark.parametrize("body, field, reason", [
    ("name: Bad_Name\n", "name", "DNS-1123"),
    ("name: a\npostgres: {members: 0}\n", "postgres.members", "greater than or equal to 1"),
    ("name: a\npostgres: {replication: maybe}\n", "postgres.replication", "'async', 'sync' or 'sync-strict'"),
    ("name: a\npostgres: {parameters: {port: 1}}\n", "postgres.parameters", "managed by pg_ops"),
    ("name: a\ndatabases: [{name: postgres, owner: x}]\n", "databases.0", "reserved"),
    ("name: a\nbackups: {store: {type: s3}}\n", "backups.store.s3.bucket", "Field required"),
    ("name: a\nunknown_key: 1\n", "unknown_key", "Extra inputs are not permitted"),
    ("name: a\nfailover: {mode: sometimes}\n", "failover.mode", "'automatic' or 'manual'"),
    ("name: a\ndatabases: [{name: m, owner: postgres_exporter}]\n", "databases.0", "reserved"),
    ("name: a\nalerts: {alertmanager_url: 'http://am:s3cret@am:9093'}\n", "alerts.alertmanager_url",
     "carries credentials"),
    ("name: a\nalerts: {alertmanager_url: 'am:9093'}\n", "alerts.alertmanager_url", "not an http(s)"),
])
def test_bad_spec_names_file_field_and_reason(tmp_path: Path, body, field, reason):
    path = tmp_path / "c.yaml"
    path.write_text(body)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert str(path) in message and f"field {field}" in message and reason in message
    assert "\n" not in message


def test_invalid_yaml_and_missing_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="not found"):
        load_specs(tmp_path / "nope.yaml")


def test_duplicate_cluster_names_and_selection(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("name: one\n")
    (tmp_path / "b.yaml").write_text("name: one\n")
    with pytest.raises(SpecError, match="already defined"):
        load_specs(tmp_path)
    (tmp_path / "b.yaml").write_text("name: two\n")
    specs = load_specs(tmp_path)
    assert select_spec(specs, None).name == "one"
    assert select_spec(specs, "two").name == "two"
    with pytest.raises(SpecError, match="'three' is not defined"):
        select_spec(specs, "three")
