"""Step entrypoints, one module per Nomad job: `python -m jobs.<step>` in a Nomad task or locally."""
