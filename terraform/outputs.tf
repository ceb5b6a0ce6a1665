# Identifiers only. No output carries a secret: tokens and secret ids never enter the state through
# Terraform, and the one value that is not public (the CI role id) is marked sensitive.

output "nomad_namespace" {
  description = "Namespace of every caravan job."
  value       = nomad_namespace.caravan.name
}

output "nomad_jobs" {
  description = "Jobs registered by Terraform (empty when manage_jobs is false)."
  value       = sort(keys(nomad_job.caravan))
}

output "environment" {
  description = "The environment every name of this workspace carries."
  value       = local.environment
}

output "nomad_policies" {
  description = "Nomad ACL policies of the token stored at secret/data/caravan/<env>/nomad (retrain and release)."
  value       = [nomad_acl_policy.retrain.name, nomad_acl_policy.release.name]
}

output "consul_pipeline_token_accessor" {
  description = "Accessor id of the retrain job's Consul token (consul acl token read -id <accessor> shows its secret to an operator)."
  value       = consul_acl_token.pipeline.accessor_id
}

output "consul_serving_token_accessor" {
  description = "Accessor id of the model server's Consul token."
  value       = consul_acl_token.serving.accessor_id
}

output "vault_jwt_auth_path" {
  description = "Mount path of the JWT auth method for Nomad workload identities (Nomad clients: vault.jwt_auth_backend_path)."
  value       = var.manage_shared_auth ? vault_jwt_auth_backend.nomad[0].path : var.vault_jwt_path
}

output "consul_task_role" {
  description = "Consul role every task of the namespace gets through its workload identity."
  value       = consul_acl_role.tasks.name
}

output "vault_roles" {
  description = "Vault role => the Nomad jobs it accepts."
  value       = { for kind, jobs in local.vault_roles : "caravan-${local.environment}-${kind}" => jobs }
}

output "ci_approle_role_id" {
  description = "Role id of the caravan-<env>-ci AppRole (CI variable VAULT_ROLE_ID). Not a secret alone, but kept out of logs."
  value       = vault_approle_auth_backend_role.ci.role_id
  sensitive   = true
}
