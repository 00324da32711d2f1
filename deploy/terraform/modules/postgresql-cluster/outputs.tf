# Connection endpoints. No output carries a password: they live in the credentials Secret.

locals {
  service_domain = "${var.namespace}.svc.${var.cluster_domain}"
  primary_host   = "${var.primary_service.name}.${local.service_domain}"
  read_host      = "${var.primary_service.name}-read.${local.service_domain}"
  pooler_host    = "${var.primary_service.name}-pooler.${local.service_domain}"
  # In-cluster paths are plain scram (pg_hba); the external path is TLS-only when tls_enabled.
  external_sslmode = var.tls_enabled ? "?sslmode=verify-full" : ""
}

output "primary_endpoint" {
  description = "In-cluster DNS name and port that always reach the current primary (read-write)."
  value       = { host = local.primary_host, port = var.primary_service.port }
}

output "read_only_endpoint" {
  description = "In-cluster Service over the streaming replicas (read-only, may lag)."
  value       = { host = local.read_host, port = var.primary_service.port }
}

output "external_endpoint" {
  description = "MetalLB address for admins on the management VLAN (null without an external Service)."
  value       = var.load_balancer_ip == null ? null : { host = var.load_balancer_ip, port = var.primary_service.port }
}

output "connection_uris" {
  description = "Per database, libpq URIs without a password (in_cluster, read_only, external, pooled)."
  value = {
    for db in var.databases : db.name => {
      in_cluster = "postgresql://${db.owner}@${local.primary_host}:${var.primary_service.port}/${db.name}"
      read_only  = "postgresql://${db.owner}@${local.read_host}:${var.primary_service.port}/${db.name}"
      external   = var.load_balancer_ip == null ? null : "postgresql://${db.owner}@${var.load_balancer_ip}:${var.primary_service.port}/${db.name}${local.external_sslmode}"
      # Through PgBouncer (transaction pooling: no server-side prepared statements); null without it.
      pooled = var.pooler_enabled ? "postgresql://${db.owner}@${local.pooler_host}:${var.primary_service.port}/${db.name}" : null
    }
  }
}

output "credentials_secret" {
  description = "Where the passwords are: the Secret's namespace/name and the key of each role."
  value = {
    namespace     = var.namespace
    name          = kubernetes_secret_v1.credentials.metadata[0].name
    password_keys = local.password_keys
    passfile_key  = local.passfile_key
  }
}

output "applied_objects" {
  description = "kind/name of every rendered object this module applies."
  value       = sort(keys(local.applied))
}
