# Applies the Git-owned objects `pg-ops render` wrote to deploy/kubernetes/<cluster>/ — the same
# files ArgoCD syncs. This module is the alternative bootstrap for a cluster without ArgoCD; never
# point both at one cluster (two appliers fight over every field: one writer per object).
#
# Why kubernetes_manifest (hashicorp/kubernetes) and not kubectl_manifest: it is the documented,
# maintained way in the official provider (server-side apply, import, drift shown in plan), and
# its provider function manifest_decode_multi reads the multi-document files as they are. The
# gavinbunney/kubectl provider behind kubectl_manifest has had no release since 2022. The price:
# kubernetes_manifest needs the API server reachable at plan time, and the CRDs of the custom
# kinds (ServiceMonitor, PrometheusRule: kube-prometheus-stack) installed before the first plan —
# or monitoring_enabled = false.
#
# What this module never applies (pg_ops owns it: docs/architecture/design.md, ownership): the desired-state
# ConfigMap and the pods' role labels; the credentials Secret is created once (secrets.tf) and
# then left to pg_ops. After the first apply, run `pg-ops deploy --cluster <name>` with
# `kubernetes.gitops: true` in the spec: it writes the desired state the member scripts wait for
# and labels the primary, and it only reads the objects applied here.


locals {
  manifests_dir = coalesce(var.manifests_dir, "${path.module}/../../../kubernetes/${var.cluster_name}")
  # kustomization.yaml lists every rendered file, in apply order: the same list ArgoCD reads.
  rendered_files = yamldecode(file("${local.manifests_dir}/kustomization.yaml")).resources
  rendered = flatten([
    for name in local.rendered_files :
    provider::kubernetes::manifest_decode_multi(file("${local.manifests_dir}/${name}"))
  ])
  custom_kinds = ["ServiceMonitor", "PrometheusRule"]
  applied = {
    for object in local.rendered : "${object.kind}/${object.metadata.name}" => object
    if var.monitoring_enabled || !contains(local.custom_kinds, object.kind)
  }

  services    = { for object in local.rendered : object.metadata.name => object if object.kind == "Service" }
  statefulset = one([for object in local.rendered : object if object.kind == "StatefulSet"])
  external    = lookup(local.services, "${var.primary_service.name}-external", null)
}

# The variables describe the spec the files were rendered from; refuse to plan when they do not
# (a stale render, or a variable set for another cluster) instead of applying one and
# reporting the other in the outputs.
resource "terraform_data" "rendered_matches_variables" {
  input = sort(keys(local.applied))

  lifecycle {
    precondition {
      condition     = alltrue([for object in local.rendered : contains([var.namespace, var.drill_namespace], object.metadata.namespace)])
      error_message = "${local.manifests_dir}: rendered objects are not all in namespace ${var.namespace} or the drill namespace ${var.drill_namespace}."
    }
    precondition {
      condition     = try(local.statefulset.metadata.name, "") == var.cluster_name
      error_message = "${local.manifests_dir}: no StatefulSet named ${var.cluster_name} (render the cluster first: pg-ops render --cluster ${var.cluster_name})."
    }
    precondition {
      condition     = try(local.statefulset.spec.volumeClaimTemplates[0].spec.resources.requests.storage, "") == var.storage
      error_message = "${local.manifests_dir}: the StatefulSet's volume size differs from storage = ${var.storage}."
    }
    precondition {
      condition = alltrue([
        for name in [var.primary_service.name, "${var.primary_service.name}-read"] :
        try(local.services[name].spec.ports[0].port, -1) == var.primary_service.port
      ])
      error_message = "${local.manifests_dir}: Services ${var.primary_service.name} and ${var.primary_service.name}-read must exist on port ${var.primary_service.port}."
    }
    precondition {
      condition = (var.load_balancer_ip == null ? local.external == null : (
        try(local.external.metadata.annotations["metallb.io/loadBalancerIPs"], "") == var.load_balancer_ip &&
        try(local.external.spec.loadBalancerSourceRanges, []) == var.load_balancer_source_ranges
      ))
      error_message = "${local.manifests_dir}: the external Service does not match load_balancer_ip / load_balancer_source_ranges."
    }
  }
}

resource "kubernetes_namespace_v1" "cluster" {
  # The cluster's namespace and the restore drills' (a drill pod lives apart from the members'
  # Secrets: docs/architecture/kubernetes.md, restore-drill targets).
  for_each = var.create_namespace ? toset([var.namespace, var.drill_namespace]) : toset([])

  metadata {
    name = each.value
  }
}

resource "kubernetes_manifest" "rendered" {
  for_each = local.applied

  manifest = each.value

  field_manager {
    name            = var.field_manager
    force_conflicts = false # a conflict means another writer (ArgoCD, pg_ops): stop and say so
  }

  # The Secret first: the exporter sidecar and the member script mount it at pod start.
  depends_on = [
    terraform_data.rendered_matches_variables,
    kubernetes_namespace_v1.cluster,
    kubernetes_secret_v1.credentials,
  ]
}
