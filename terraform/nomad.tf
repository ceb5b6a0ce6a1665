# Nomad: the namespace, the ACL policy of the pipeline's token, and one job per spec in ../nomad.

resource "nomad_namespace" "caravan" {
  name        = var.namespace
  description = "caravan: pipeline steps, periodic retraining, luigid and the model server"
}

# The token stored in Vault at secret/data/caravan/nomad. Two holders use it: the retrain job (the luigi
# worker dispatches the steps, follows them and copies their logs) and CI (caravan publish parses and
# registers the specs), hence submit-job. Scoped to this one namespace. The token itself is created by hand
# (see README.md): nomad_acl_token would keep its secret in the Terraform state.
resource "nomad_acl_policy" "caravan_pipeline" {
  name        = "caravan-pipeline-${var.namespace}"
  description = "caravan: dispatch and follow the step jobs, publish the job specs (namespace ${var.namespace})"
  rules_hcl   = templatefile("${path.module}/policies/nomad/caravan-pipeline.hcl.tftpl", { namespace = var.namespace })
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

  # Job => its Vault role, from the role => jobs map in vault.tf.
  job_roles = merge([for role, jobs in local.vault_roles : { for job in jobs : job => role }]...)

  # The provider passes HCL2 variables as strings: lists in HCL syntax (jsonencode writes valid HCL).
  common_job_variables = merge(var.job_variables, {
    image       = "${var.image_repository}:${var.image_tag}"
    release     = var.image_tag # what serving's /health reports, as with caravan publish
    datacenters = jsonencode(var.datacenters)
    namespace   = var.namespace
    model       = var.model
  })
}

resource "nomad_job" "caravan" {
  for_each = var.manage_jobs ? local.jobspecs : {}

  jobspec = each.value

  hcl2 {
    vars = {
      for name, value in merge(local.common_job_variables, { vault_role = lookup(local.job_roles, each.key, "") }) :
      name => value if contains(local.declared_variables[each.key], name)
    }
  }

  deregister_on_destroy = true
  purge_on_destroy      = false
  detach                = true

  lifecycle {
    # A spec that asks Vault for secrets must be bound to a role (vault.tf); otherwise its tasks never start.
    precondition {
      condition     = !contains(local.declared_variables[each.key], "vault_role") || contains(keys(local.job_roles), each.key)
      error_message = "Job ${each.key} declares vault_role but no Vault role in vault.tf (local.vault_roles) lists it."
    }
  }

  # The roles must exist before a task asks for a token.
  depends_on = [nomad_namespace.caravan, vault_jwt_auth_backend_role.job]
}
