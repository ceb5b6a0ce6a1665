# AppRole caravan-ci: the release jobs of the CI pipeline. The Nomad token caravan publish registers the
# jobs with, nothing else.
path "secret/data/caravan/nomad" {
  capabilities = ["read"]
}
