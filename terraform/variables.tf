# Inputs of one environment (one workspace per environment: staging, production). None of them is a secret:
# provider tokens come from the environment, and the secrets the jobs read live in Vault, written by hand.

# -- where the clusters are ------------------------------------------------------------------------------

variable "nomad_address" {
  type        = string
  description = "Nomad HTTP API address, e.g. https://nomad.service.consul:4646."
}

variable "nomad_jwks_url" {
  type        = string
  default     = ""
  description = "URL where Vault fetches the keys that sign Nomad workload identities (empty: <nomad_address>/.well-known/jwks.json). Vault must reach it."
}

variable "nomad_jwks_ca_pem" {
  type        = string
  default     = ""
  description = "PEM CA bundle for the JWKS URL's TLS certificate (empty: the system roots). Not a secret."
}

variable "consul_address" {
  type        = string
  default     = "127.0.0.1:8500"
  description = "Consul HTTP API address as host:port (the provider takes the scheme separately)."
}

variable "consul_scheme" {
  type        = string
  default     = "https"
  description = "http or https."

  validation {
    condition     = contains(["http", "https"], var.consul_scheme)
    error_message = "consul_scheme must be http or https."
  }
}

variable "vault_address" {
  type        = string
  description = "Vault (or OpenBao) address, e.g. https://vault.service.consul:8200."
}

# -- what is deployed ------------------------------------------------------------------------------------

variable "namespace" {
  type        = string
  default     = "caravan"
  description = "Nomad namespace of every caravan job: caravan in production, caravan-staging in staging."

  validation {
    condition     = can(regex("^[a-zA-Z0-9-]{1,128}$", var.namespace))
    error_message = "namespace must be letters, digits and dashes (Nomad's rule for namespace names)."
  }
}

variable "environment" {
  type        = string
  default     = ""
  description = "Environment name in every shared name (Consul services caravan-<env>-*, KV caravan/<env>/models/, Vault secret/data/caravan/<env>/*, roles and policies caravan-<env>-*). Empty: from the namespace, as caravan derives it (caravan: production, caravan-<env>: <env>)."

  validation {
    condition     = var.environment == "" || can(regex("^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$", var.environment))
    error_message = "environment must be 1-32 of [a-z0-9-], starting and ending with a letter or digit (caravan's rule)."
  }
}

variable "datacenters" {
  type        = list(string)
  default     = ["dc1"]
  description = "Nomad datacenters the jobs may run in."
}

variable "image_repository" {
  type        = string
  description = "Repository of the project image without a tag, e.g. registry.example.com/data/caravan/caravan."

  validation {
    condition     = !can(regex("[:@][^/]*$", var.image_repository))
    error_message = "image_repository must not carry a tag or digest; set image_tag."
  }
}

variable "image_tag" {
  type        = string
  description = "Release tag of the image every job runs, e.g. v1.4.0 (the git tag CI built and pushed)."

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag)) && var.image_tag != "latest"
    error_message = "image_tag must be a valid image tag naming a release (not latest)."
  }
}

variable "model" {
  type        = string
  default     = "ranker"
  description = "Model the serving job serves; its Consul token may read caravan/models/<model>/ and nothing else."

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]*$", var.model))
    error_message = "model must be lower-case letters, digits, dashes and underscores."
  }
}

variable "jobspec_dir" {
  type        = string
  default     = "../nomad"
  description = "Folder of the *.nomad.hcl specs, relative to this module."
}

variable "manage_jobs" {
  type        = bool
  default     = true
  description = "Register the Nomad jobs from Terraform. Set false where the CI pipeline releases them with caravan publish, so that the two never fight over the image tag."
}

variable "job_variables" {
  type        = map(string)
  default     = {}
  description = "More HCL2 variables for every spec that declares them, as strings (e.g. artifact_root = \"s3://bucket/caravan\"). Never a secret: anyone who can read a job can read them."

  validation {
    condition     = alltrue([for name in keys(var.job_variables) : !can(regex("(?i)(token|secret|password|credential)", name))])
    error_message = "job_variables must not carry secrets; jobs read them from Vault."
  }
}

# -- Vault -----------------------------------------------------------------------------------------------

variable "vault_jwt_path" {
  type        = string
  default     = "jwt-nomad"
  description = "Mount path of the JWT auth method that trusts Nomad's workload identities (the Nomad clients' vault.jwt_auth_backend_path)."
}

variable "vault_token_period" {
  type        = number
  default     = 1800
  description = "Period (seconds) of the tokens the job roles issue; Nomad renews them while the task runs."
}

variable "manage_shared_auth" {
  type        = bool
  default     = true
  description = "Create the auth methods every environment shares (Vault's JWT mount vault_jwt_path and AppRole mount approle_path, Consul's JWT auth method consul_auth_method). Exactly one workspace per Vault and Consul sets true (production); the others set false and only add their own roles, policies and binding rules."
}

variable "consul_auth_method" {
  type        = string
  default     = "nomad-workloads"
  description = "Name of Consul's JWT auth method for Nomad workload identities (Nomad servers: consul.service_auth_method and consul.task_auth_method)."
}

variable "approle_path" {
  type        = string
  default     = "approle"
  description = "Mount path of the AppRole auth method CI logs in with."
}

variable "ci_token_ttl" {
  type        = number
  default     = 900
  description = "TTL (seconds) of the token CI gets from its AppRole: one publish."
}

variable "ci_secret_id_ttl" {
  type        = number
  default     = 2592000
  description = "Lifetime (seconds) of a CI secret id before it must be rotated (default 30 days)."
}

variable "ci_bound_cidrs" {
  type        = list(string)
  default     = []
  description = "CIDR blocks of the CI runners allowed to log in with the CI AppRole (empty: anywhere)."
}
