# The credentials Secret, in the exact layout the Kubernetes platform reads
# (pg_ops/platforms/kubernetes.py, kubernetes_names.py): name <cluster>-credentials, one key
# "<role>-password" per role (the superuser, the replication role, the exporter's monitoring role,
# each database owner; with pooler_enabled PgBouncer's own login "pgops_pooler") and
# "pgpass", a libpq password file for the superuser and the replication role (the member script's);
# with pooler_enabled "pooler-userlist", PgBouncer's auth-file line for its own login (its pods
# mount that key alone: render/pooler.py).
#
# Created once here; from then on pg_ops owns it: it reads it, adds a key for a role the spec
# gains, and never replaces a password. ignore_changes keeps OpenTofu from undoing those
# additions; prevent_destroy keeps a `tofu destroy` from deleting the only copy of passwords the
# data directories already hold (remove it deliberately, after a backup of the Secret).
#
# The passwords are in the OpenTofu state: keep that state encrypted (OpenTofu's state encryption
# or an encrypted backend) and readable by the platform team only.

locals {
  superuser        = "postgres"
  replication_user = "replicator"
  monitoring_user  = "postgres_exporter"
  pooler_user      = "pgops_pooler"
  pooler_roles     = var.pooler_enabled ? [local.pooler_user] : []
  roles            = distinct(concat([local.superuser, local.replication_user, local.monitoring_user], local.pooler_roles, [for db in var.databases : db.owner]))
  passfile_roles   = [local.superuser, local.replication_user]
  password_keys    = { for role in local.roles : role => "${role}-password" }
  passfile_key     = "pgpass"
  userlist_key     = "pooler-userlist"
}

resource "random_password" "role" {
  for_each = toset(local.roles)

  length = 32
  # Letters and digits only: safe in a libpq passfile (no ':' or '\') and in a URI (no '@', '/').
  special = false
}

resource "kubernetes_secret_v1" "credentials" {
  metadata {
    name      = "${var.cluster_name}-credentials"
    namespace = var.namespace
    # pg_ops's own labels (kubernetes_state.owned_metadata): no app.kubernetes.io/instance, which
    # ArgoCD's label tracking would claim and prune.
    labels = {
      "app.kubernetes.io/name"       = "postgresql"
      "pg-ops.io/cluster"            = var.cluster_name
      "app.kubernetes.io/managed-by" = "pg-ops"
    }
    annotations = {
      "pg-ops.io/created-by" = "opentofu"
    }
  }

  type = "Opaque"
  data = merge(
    { for role in local.roles : local.password_keys[role] => random_password.role[role].result },
    { (local.passfile_key) = join("", [for role in local.passfile_roles : "*:*:*:${role}:${random_password.role[role].result}\n"]) },
    # Letters and digits only (random_password below): nothing to quote in PgBouncer's line.
    { for role in local.pooler_roles : local.userlist_key => "\"${role}\" \"${random_password.role[role].result}\"\n" },
  )

  lifecycle {
    ignore_changes  = [data, metadata[0].labels, metadata[0].annotations]
    prevent_destroy = true
  }

  depends_on = [kubernetes_namespace_v1.cluster]
}
