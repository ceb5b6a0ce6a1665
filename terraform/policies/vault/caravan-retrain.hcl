# Role caravan-retrain: the periodic retrain job and its backfill (the luigi worker). Storage credentials,
# the Consul token that moves the model pointer, the Nomad token that dispatches the steps.
path "secret/data/caravan/storage" {
  capabilities = ["read"]
}

path "secret/data/caravan/consul" {
  capabilities = ["read"]
}

path "secret/data/caravan/nomad" {
  capabilities = ["read"]
}
