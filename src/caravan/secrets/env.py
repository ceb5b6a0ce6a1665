"""Secrets from the environment: what a Nomad task's templates render, or what a laptop exports."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..errors import SecretNotFound
from ..redaction import remember
from .base import ENV_NAMES, SecretSource, check_path, env_name


class EnvSecrets(SecretSource):
    """Secrets from environment variables (what a Nomad template with ``env = true`` renders)."""

    name = "env"

    def read(self, path: str) -> Mapping[str, str]:
        check_path(path)
        fields = {f: os.environ[n] for (p, f), n in ENV_NAMES.items() if p == path and os.environ.get(n)}
        prefix = env_name(path, "")
        for name, value in os.environ.items():
            if name.startswith(prefix) and value and name != prefix:
                fields.setdefault(name[len(prefix):].lower(), value)
        if not fields:
            raise SecretNotFound(path, source=f"the environment (e.g. {env_name(path, 'token')})")
        for value in fields.values():
            remember(value)
        return fields

    def describe(self) -> str:
        return "the environment"
