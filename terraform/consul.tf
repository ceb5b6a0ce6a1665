# Consul, for one environment: the tokens of the two caravan processes that talk to Consul themselves, and the
# workload identities Nomad's template runner reads with. Rows: access.yaml.
#
# pipeline  the retrain job (token in Vault at secret/data/caravan/<env>/consul): moves its environment's model
#           pointers (caravan/<env>/models/<model>/current, .../history/) with check-and-set, and takes the
#           promotion lock caravan/<env>/models/<model>/lock, a Consul session lock, hence session write.
# serving   the model server (token at secret/data/caravan/<env>/serving, field consul_token): watches its own
#           model's keys, caravan/<env>/models/<model>/, and can write nothing.
# tasks     the role every task of the namespace gets through its Consul workload identity (Nomad 1.7+; on 1.10+
#           only a task with a consul {} block has one): what the jobs' templates read, the scheduler's service
#           (retrain-ranker) and the model pointer (serving).
#
# Only the tokens' accessor ids reach the Terraform state (consul_acl_token never reads the secret back);
# an operator copies each secret into Vault once (README.md).

resource "consul_acl_policy" "pipeline" {
  name        = "caravan-${local.environment}-pipeline"
  description = "caravan retrain (${local.environment}): write the model pointers, their history and promotion locks"
  rules       = templatefile("${path.module}/policies/consul/caravan-pipeline.hcl.tftpl", local.policy_variables)
}

resource "consul_acl_policy" "serving" {
  name        = "caravan-${local.environment}-serving-${var.model}"
  description = "caravan serving (${local.environment}): read the pointer of model ${var.model}"
  rules       = templatefile("${path.module}/policies/consul/caravan-serving.hcl.tftpl", local.policy_variables)
}

resource "consul_acl_token" "pipeline" {
  description = "caravan retrain (${local.environment}): copy into Vault at secret/caravan/${local.environment}/consul, field token"
  policies    = [consul_acl_policy.pipeline.name]
  local       = false
}

resource "consul_acl_token" "serving" {
  description = "caravan serving ${var.model} (${local.environment}): copy into Vault at secret/caravan/${local.environment}/serving, field consul_token"
  policies    = [consul_acl_policy.serving.name]
  local       = false
}

# -- workload identities ---------------------------------------------------------------------------------
#
# Nomad signs a JWT for every service and (with a consul {} block) every task; its client logs in to Consul
# with it at this auth method and renders the task's templates with the token it gets. The Nomad servers issue
# those identities with aud = ["consul.io"] (server config: consul { service_identity { aud = ["consul.io"] }
# task_identity { aud = ["consul.io"] } }). One auth method per Consul, shared by the environments; each
# environment adds binding rules that select its own namespace, so none of them can reach another's names.

resource "consul_acl_auth_method" "nomad" {
  count = var.manage_shared_auth ? 1 : 0

  name          = var.consul_auth_method
  type          = "jwt"
  display_name  = "Nomad workload identities"
  description   = "Nomad services and tasks (caravan jobs of every environment)"
  max_token_ttl = "1h"
  config_json = jsonencode({
    JWKSURL          = local.nomad_jwks_url
    JWKSCACert       = var.nomad_jwks_ca_pem
    JWTSupportedAlgs = ["RS256", "EdDSA"]
    BoundAudiences   = ["consul.io"]
    ClaimMappings = {
      nomad_namespace = "nomad_namespace"
      nomad_job_id    = "nomad_job_id"
      nomad_task      = "nomad_task"
      nomad_service   = "nomad_service"
    }
  })
}

resource "consul_acl_policy" "tasks" {
  name        = "caravan-${local.environment}-tasks"
  description = "caravan tasks (${local.environment}): what the jobs' templates read, nothing else"
  rules       = templatefile("${path.module}/policies/consul/caravan-tasks.hcl.tftpl", local.policy_variables)
}

resource "consul_acl_role" "tasks" {
  name        = "caravan-${local.environment}-tasks"
  description = "Every task of Nomad namespace ${var.namespace} (workload identity)"
  policies    = [consul_acl_policy.tasks.id]
}

# Tasks (identities without nomad_service) of this namespace get the environment's task role.
resource "consul_acl_binding_rule" "tasks" {
  auth_method = var.consul_auth_method
  description = "caravan ${local.environment}: tasks of namespace ${var.namespace}"
  selector    = "\"nomad_service\" not in value and value.nomad_namespace == \"${var.namespace}\""
  bind_type   = "role"
  bind_name   = consul_acl_role.tasks.name

  depends_on = [consul_acl_auth_method.nomad]
}

# Services of this namespace register as themselves (a service identity: write on that one service name),
# which is how Nomad registers caravan-<env>-luigid and caravan-<env>-<model> with their checks.
resource "consul_acl_binding_rule" "services" {
  auth_method = var.consul_auth_method
  description = "caravan ${local.environment}: services of namespace ${var.namespace}"
  selector    = "\"nomad_service\" in value and value.nomad_namespace == \"${var.namespace}\""
  bind_type   = "service"
  bind_name   = "$${value.nomad_service}"

  depends_on = [consul_acl_auth_method.nomad]
}
