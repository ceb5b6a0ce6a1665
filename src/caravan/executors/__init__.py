"""Executors run a heavy step's job: locally in a subprocess, or on Nomad (issue 3)."""
