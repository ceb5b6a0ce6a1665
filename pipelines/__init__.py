"""Luigi pipelines: what to build. Run them with `luigi --module pipelines.<name> <Task> ...`."""
