"""Secret sources: the environment by default, Vault when configured."""
