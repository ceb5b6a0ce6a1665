# Role caravan-serving: the model server. Storage credentials (it loads the model artifact) and its own
# read-only Consul token.
path "secret/data/caravan/storage" {
  capabilities = ["read"]
}

path "secret/data/caravan/serving" {
  capabilities = ["read"]
}
