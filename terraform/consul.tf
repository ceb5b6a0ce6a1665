# Consul: the policies and tokens of the two caravan processes that talk to Consul themselves.
#
# pipeline  the retrain job (token in Vault at secret/data/caravan/consul): moves the model pointers
#           (caravan/models/<model>/current, .../history/) with check-and-set, and takes the promotion
#           lock caravan/models/<model>/lock, a Consul session lock, hence session write.
# serving   the model server (token at secret/data/caravan/serving, field consul_token): watches its own
#           model's keys, caravan/models/<model>/, and can write nothing.
#
# Only the tokens' accessor ids reach the Terraform state (consul_acl_token never reads the secret back);
# an operator copies each secret into Vault once (README.md). Nomad's own Consul integration (service
# registration, the {{ service "caravan-luigid" }} template) uses Nomad's workload identities, not these.

resource "consul_acl_policy" "pipeline" {
  name        = "caravan-pipeline-${var.namespace}"
  description = "caravan retrain: write the model pointers, their history and promotion locks"
  rules       = file("${path.module}/policies/consul/caravan-pipeline.hcl")
}

resource "consul_acl_policy" "serving" {
  name        = "caravan-serving-${var.model}-${var.namespace}"
  description = "caravan serving: read the pointer of model ${var.model}"
  rules       = templatefile("${path.module}/policies/consul/caravan-serving.hcl.tftpl", { model = var.model })
}

resource "consul_acl_token" "pipeline" {
  description = "caravan retrain (${var.namespace}): copy into Vault at secret/caravan/consul, field token"
  policies    = [consul_acl_policy.pipeline.name]
  local       = false
}

resource "consul_acl_token" "serving" {
  description = "caravan serving ${var.model} (${var.namespace}): copy into Vault at secret/caravan/serving, field consul_token"
  policies    = [consul_acl_policy.serving.name]
  local       = false
}
