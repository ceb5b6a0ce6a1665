# Providers and where they connect. No credential is ever set here: the providers read their tokens from
# the environment of whoever runs Terraform (NOMAD_TOKEN, CONSUL_HTTP_TOKEN, VAULT_TOKEN), as the CLIs do.
terraform {
  required_version = ">= 1.6.0"

  required_providers {
    nomad = {
      source  = "hashicorp/nomad"
      version = "~> 2.4"
    }
    consul = {
      source  = "hashicorp/consul"
      version = "~> 2.21"
    }
    vault = {
      source  = "hashicorp/vault"
      version = ">= 4.4.0, < 6.0.0"
    }
  }
}

provider "nomad" {
  address = var.nomad_address
}

provider "consul" {
  address = var.consul_address
  scheme  = var.consul_scheme
}

provider "vault" {
  address = var.vault_address
}
