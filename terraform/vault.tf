# Vault: how Nomad tasks and CI get tokens, and what those tokens may read, for one environment.
#
# The secrets themselves (KV v2, mount "secret") are written by hand and never pass through Terraform:
#   secret/data/caravan/<env>/storage  aws_access_key_id, aws_secret_access_key, webhdfs_token (optional)
#   secret/data/caravan/<env>/consul   token         (Consul policy caravan-<env>-pipeline)
#   secret/data/caravan/<env>/nomad    token         (Nomad policies caravan-<env>-retrain and -release)
#   secret/data/caravan/<env>/serving  consul_token  (Consul policy caravan-<env>-serving-<model>)
# Each policy in policies/vault/ grants read on exactly the paths its holder uses (access.yaml): no wildcard,
# no write, nothing of another environment. tests/unit/test_terraform.py holds them to that.
#
# Names carry the environment (policies and roles caravan-<env>-*), so staging and production share one Vault
# without touching each other's roles or bound_claims. The JWT and AppRole mounts are shared: the workspace
# with manage_shared_auth = true creates them, the others only add their roles.

locals {
  # caravan's own rule (caravan.config.environment_of_namespace): caravan is production, caravan-<env> is <env>,
  # default is dev, any other namespace is its own name.
  environment = var.environment != "" ? var.environment : (
    var.namespace == "caravan" ? "production" : var.namespace == "default" ? "dev" : trimprefix(var.namespace, "caravan-")
  )

  # Vault role kind (role and policy caravan-<env>-<kind>, policies/vault/caravan-<kind>.hcl.tftpl) => the jobs
  # that log in with it. A job names its role in its spec (vault { role = var.vault_role }); the role only
  # accepts those jobs of this environment's namespace.
  vault_roles = {
    "step" = [
      "simulate-events", "prepare-dataset", "validate-data", "process-text", "train-lightgbm", "evaluate",
      "gate-model", "make-numbers", "summarize", "train-lightgbm-distributed",
    ]
    "retrain" = ["retrain-ranker", "retrain-ranker-backfill", "monitor-ranker"] # monitor-ranker: issue 13's triggers
    "serving" = ["serving", "worker", "gateway"] # worker, gateway: issue 12 (nomad/worker.nomad.hcl, gateway.nomad.hcl)
  }

  policy_variables = { environment = local.environment, namespace = var.namespace, model = var.model }

  nomad_jwks_url = var.nomad_jwks_url != "" ? var.nomad_jwks_url : "${trimsuffix(var.nomad_address, "/")}/.well-known/jwks.json"
}

resource "vault_policy" "job" {
  for_each = local.vault_roles

  name   = "caravan-${local.environment}-${each.key}"
  policy = templatefile("${path.module}/policies/vault/caravan-${each.key}.hcl.tftpl", local.policy_variables)
}

# Nomad (1.7+) exchanges each task's workload identity (a JWT signed by the Nomad servers) for a Vault token
# at this mount. The Nomad servers must issue a Vault identity with aud = ["vault.io"] (server agent
# config: vault { default_identity { aud = ["vault.io"] } }) and the clients point at this path
# (vault { jwt_auth_backend_path = "jwt-nomad" }). One per Vault, shared by the environments.
resource "vault_jwt_auth_backend" "nomad" {
  count = var.manage_shared_auth ? 1 : 0

  path               = var.vault_jwt_path
  type               = "jwt"
  description        = "Nomad workload identities (caravan jobs of every environment)"
  jwks_url           = local.nomad_jwks_url
  jwks_ca_pem        = var.nomad_jwks_ca_pem != "" ? var.nomad_jwks_ca_pem : null
  jwt_supported_algs = ["RS256", "EdDSA"]
  # No default_role: a job that names no role gets no token.
}

resource "vault_jwt_auth_backend_role" "job" {
  for_each = local.vault_roles

  backend   = var.manage_shared_auth ? vault_jwt_auth_backend.nomad[0].path : var.vault_jwt_path
  role_name = "caravan-${local.environment}-${each.key}"
  role_type = "jwt"

  bound_audiences = ["vault.io"]
  # A dispatched or periodic child job carries its parent's ID in nomad_job_id, so the parent names suffice.
  # A list of values is written comma-separated; any one of them matches. The namespace keeps another
  # environment's jobs of the same name out. A step run at another size than its spec's dispatches the
  # step's sized twin "<job>@<cpu>c<mem>m" (caravan.executors.sizing), whose children carry the twin's ID:
  # the step role also matches "<job>@*" (glob; the other names hold no glob character, so they match
  # exactly). Registering a twin needs submit-job, with which the job itself could be replaced anyway.
  bound_claims_type = "glob"
  bound_claims = {
    nomad_namespace = var.namespace
    nomad_job_id    = join(",", each.key == "step" ? concat(each.value, [for job in each.value : "${job}@*"]) : each.value)
  }

  user_claim              = "/nomad_job_id"
  user_claim_json_pointer = true
  claim_mappings = {
    nomad_namespace = "nomad_namespace"
    nomad_job_id    = "nomad_job_id"
    nomad_task      = "nomad_task"
  }

  # Service tokens that Nomad renews for as long as the task runs (no explicit max TTL, or a long step
  # would lose its token halfway).
  token_type             = "service"
  token_policies         = [vault_policy.job[each.key].name]
  token_period           = var.vault_token_period
  token_explicit_max_ttl = 0
}

# CI: the release jobs log in with the AppRole "caravan-<env>-ci" (CI variables VAULT_ROLE_ID and VAULT_SECRET_ID,
# protected, masked and scoped to the GitLab environment) and read secret/data/caravan/<env>/nomad, the Nomad
# token that `caravan publish` uses (CARAVAN_SECRETS=vault makes caravan do the login and the read itself).
# Secret ids are generated by hand, never by Terraform (the state would keep them):
#   vault write -f -field=secret_id auth/approle/role/caravan-<env>-ci/secret-id
resource "vault_policy" "ci" {
  name   = "caravan-${local.environment}-ci"
  policy = templatefile("${path.module}/policies/vault/caravan-ci.hcl.tftpl", local.policy_variables)
}

resource "vault_auth_backend" "approle" {
  count = var.manage_shared_auth ? 1 : 0

  type        = "approle"
  path        = var.approle_path
  description = "AppRole logins (caravan CI of every environment)"
}

resource "vault_approle_auth_backend_role" "ci" {
  backend   = var.manage_shared_auth ? vault_auth_backend.approle[0].path : var.approle_path
  role_name = "caravan-${local.environment}-ci"

  token_policies        = [vault_policy.ci.name]
  token_ttl             = var.ci_token_ttl
  token_max_ttl         = var.ci_token_ttl * 2
  token_type            = "service"
  secret_id_ttl         = var.ci_secret_id_ttl
  secret_id_bound_cidrs = length(var.ci_bound_cidrs) > 0 ? var.ci_bound_cidrs : null
  token_bound_cidrs     = length(var.ci_bound_cidrs) > 0 ? var.ci_bound_cidrs : null
}
