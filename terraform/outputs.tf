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

output "nomad_pipeline_policy" {
  description = "Nomad ACL policy for the token stored at secret/data/caravan/nomad."
  value       = nomad_acl_policy.caravan_pipeline.name
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
  value       = vault_jwt_auth_backend.nomad.path
}

output "vault_roles" {
  description = "Vault role => the Nomad jobs it accepts."
  value       = local.vault_roles
}

output "ci_approle_role_id" {
  description = "Role id of the caravan-ci AppRole (CI variable VAULT_ROLE_ID). Not a secret alone, but kept out of logs."
  value       = vault_approle_auth_backend_role.ci.role_id
  sensitive   = true
}
