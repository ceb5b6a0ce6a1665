"""The model server with hot reload."""
