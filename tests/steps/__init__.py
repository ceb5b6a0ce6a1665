"""Test-only steps with their job specs (tests/steps/nomad/): echo, fail, sleep."""
