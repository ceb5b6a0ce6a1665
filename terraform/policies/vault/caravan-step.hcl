# Role caravan-step: every step job (python -m jobs.<step>). Storage credentials only.
path "secret/data/caravan/storage" {
  capabilities = ["read"]
}
