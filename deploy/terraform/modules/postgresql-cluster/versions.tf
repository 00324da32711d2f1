# OpenTofu >= 1.7 (Terraform >= 1.8 also works): main.tf uses the kubernetes provider's
# provider-defined function manifest_decode_multi, which needs provider functions (OpenTofu 1.7,
# Terraform 1.8) and hashicorp/kubernetes >= 2.28.
terraform {
  required_version = ">= 1.7.0"

  required_providers {
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = ">= 2.28.0, < 4.0.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.6.0, < 4.0.0"
    }
  }
}
