"""Model pointers: which artifact is the current model, with history and rollback."""
