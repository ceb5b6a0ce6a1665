# Nomad: the namespace, the ACL policies of caravan's Nomad tokens, and one job per spec in ../nomad.

resource "nomad_namespace" "caravan" {
  name        = var.namespace
  description = "caravan (${local.environment}): pipeline steps, periodic retraining, luigid and the model server"
}

# The token stored in Vault at secret/data/caravan/<env>/nomad carries both policies: the retrain job (the luigi
# worker dispatches, follows and stops the steps and copies their logs) and CI (caravan publish parses, plans and
# registers the specs, luigid's read-write host volume included). A CI token of its own would carry only the
# release policy. The tokens themselves are created by hand (README.md): nomad_acl_token would keep their secrets
# in the Terraform state. Rows: access.yaml.
resource "nomad_acl_policy" "retrain" {
  name        = "caravan-${local.environment}-retrain"
  description = "caravan retrain (${local.environment}): dispatch, follow and stop the step jobs, read their logs"
  rules_hcl   = templatefile("${path.module}/policies/nomad/caravan-retrain.hcl.tftpl", local.policy_variables)
}

resource "nomad_acl_policy" "release" {
  name        = "caravan-${local.environment}-release"
  description = "caravan publish (${local.environment}): parse, plan and register the job specs"
  rules_hcl   = templatefile("${path.module}/policies/nomad/caravan-release.hcl.tftpl", local.policy_variables)
}

locals {
  jobspec_dir = "${path.module}/${var.jobspec_dir}"

  # Job name (the file name without .nomad.hcl, which is also the job's ID) => spec text.
  jobspecs = {
    for spec_file in fileset(local.jobspec_dir, "*.nomad.hcl") :
    trimsuffix(spec_file, ".nomad.hcl") => file("${local.jobspec_dir}/${spec_file}")
  }

  # The variables each spec declares: Nomad refuses a value for an undeclared variable, so every spec gets
  # only its own (as caravan publish does).
  declared_variables = {
    for name, text in local.jobspecs :
    name => toset([for match in regexall("(?m)^variable\\s+\"([A-Za-z0-9_-]+)\"", text) : match[0]])
  }

  # Jobs that log in to Vault (each spec names its role, caravan-<env>-<kind>), from the kind => jobs map in vault.tf.
  vault_jobs = toset(flatten(values(local.vault_roles)))

  # The provider passes HCL2 variables as strings: lists in HCL syntax (jsonencode writes valid HCL).
  common_job_variables = merge(var.job_variables, {
    image       = "${var.image_repository}:${var.image_tag}"
    release     = var.image_tag # what serving's /health reports, as with caravan publish
    datacenters = jsonencode(var.datacenters)
    namespace   = var.namespace
    environment = local.environment
    model       = var.model
  })
}

resource "nomad_job" "caravan" {
  for_each = var.manage_jobs ? local.jobspecs : {}

  jobspec = each.value

  hcl2 {
    vars = {
      for name, value in local.common_job_variables : name => value if contains(local.declared_variables[each.key], name)
    }
  }

  deregister_on_destroy = true
  purge_on_destroy      = false
  detach                = true

  lifecycle {
    # A spec that asks Vault for secrets must be accepted by one of this environment's roles (vault.tf);
    # otherwise its tasks never start.
    precondition {
      condition     = !can(regex("(?m)^\\s*vault\\s*\\{", each.value)) || contains(local.vault_jobs, each.key)
      error_message = "Job ${each.key} has a vault block but no Vault role in vault.tf (local.vault_roles) lists it."
    }
  }

  # The roles must exist before a task asks for a token.
  depends_on = [nomad_namespace.caravan, vault_jwt_auth_backend_role.job, consul_acl_binding_rule.tasks]
}
