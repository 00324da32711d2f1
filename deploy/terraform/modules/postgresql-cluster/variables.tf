# Defaults are the homelab cluster's spec (deploy/clusters/homelab.yaml); a test keeps them equal.
# The objects applied are the rendered files, not these variables: main.tf refuses to plan when
# the two disagree, so a variable can never silently differ from what `pg-ops render` wrote.

variable "cluster_name" {
  description = "Cluster name of the pg_ops spec (`name:`): the StatefulSet, its pods <name>-<i> and the credentials Secret <name>-credentials."
  type        = string
  default     = "homelab"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.cluster_name))
    error_message = "cluster_name must be a DNS-1123 label, as in the pg_ops spec."
  }
}

variable "manifests_dir" {
  description = "Folder of the rendered manifests (`pg-ops render --cluster <name>`). Default: deploy/kubernetes/<cluster_name> of this repository."
  type        = string
  default     = null
}

variable "namespace" {
  description = "Namespace of the cluster (spec kubernetes.namespace)."
  type        = string
  default     = "postgresql"
}

variable "drill_namespace" {
  description = "Namespace of the restore-drill pods (spec kubernetes.drill_namespace, default <namespace>-drills): the rendered Role <cluster>-pg-ops-drills and its binding live there, and nothing else should."
  type        = string
  default     = "postgresql-drills"
}

variable "create_namespace" {
  description = "Create the namespace and the drill namespace here. false when something else (ArgoCD of another app, a platform module) owns them."
  type        = bool
  default     = true
}

variable "storage" {
  description = "Volume size of each member (spec kubernetes.storage); checked against the StatefulSet's volumeClaimTemplates."
  type        = string
  default     = "50Gi"
}

variable "primary_service" {
  description = "The Service that always reaches the primary (spec kubernetes.services.primary). The read-only Service is <name>-read, the external one <name>-external."
  type = object({
    name = string
    port = number
  })
  default = {
    name = "postgres-ha-postgresql"
    port = 5432
  }
}

variable "load_balancer_ip" {
  description = "MetalLB address of the external Service for admins on the management VLAN (spec kubernetes.services.external.ip); null when the spec has no external Service."
  type        = string
  default     = "192.168.10.100"
}

variable "load_balancer_source_ranges" {
  description = "Networks allowed to reach the external Service (spec kubernetes.services.external.source_ranges)."
  type        = list(string)
  default     = ["192.168.10.0/24"]
}

variable "tls_enabled" {
  description = "true when the spec sets kubernetes.tls_secret: the external path then requires TLS (hostssl) and the external connection strings say sslmode=verify-full."
  type        = bool
  default     = false
}

variable "pooler_enabled" {
  description = "true when the spec sets pooler: the credentials Secret gains PgBouncer's own login (role pgops_pooler and its auth-file line, key pooler-userlist) and connection_uris a pooled URI."
  type        = bool
  default     = true
}

variable "databases" {
  description = "Application databases and their owner roles (spec databases). Each owner gets a generated password in the credentials Secret."
  type = list(object({
    name  = string
    owner = string
  }))
  default = [{ name = "app", owner = "app" }]
}

variable "cluster_domain" {
  description = "The cluster's DNS domain (K3s default)."
  type        = string
  default     = "cluster.local"
}

variable "field_manager" {
  description = "Server-side apply field manager of the objects applied here. Never `pg-ops` (pg_ops's own) nor ArgoCD's: one writer per object."
  type        = string
  default     = "opentofu-postgresql-cluster"
}

variable "monitoring_enabled" {
  description = "Apply the ServiceMonitor and PrometheusRule (their CRDs must exist before the first plan)."
  type        = bool
  default     = true
}
