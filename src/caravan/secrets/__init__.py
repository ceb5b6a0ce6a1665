"""Secret sources: the environment by default, Vault when configured.

A secret is named by a path and a field, the same names everywhere::

    storage   aws_access_key_id, aws_secret_access_key, webhdfs_token
    consul    token
    nomad     token
    serving   consul_token

In Vault (KV v2) they live at ``<mount>/data/<prefix>/<environment>/<path>``
(``secret/data/caravan/production/storage``).
In a Nomad task, the job's ``vault`` and ``template`` blocks render them into the environment
variables of :data:`ENV_NAMES` (the ecosystem's own names where one exists), so a step reads
them with the ``env`` source and needs no Vault client. On a laptop or in CI, ``[caravan]
secrets = vault`` (or ``CARAVAN_SECRETS=vault``) reads them from Vault with hvac.

Whatever the source, an environment variable that is set wins, as ``NOMAD_TOKEN`` or
``AWS_SECRET_ACCESS_KEY`` do for every other tool. Secrets never travel through dispatch meta,
Luigi parameters or manifests: each process that needs one reads it from its own source.
Every value read is remembered by :mod:`caravan.redaction`, which hides it in logs and errors.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

from ..config import caravan, section, setting
from ..errors import ConfigurationError, SecretNotFound
from ..redaction import MIN_REDACTED_LENGTH, REDACTED, redact, remember
from .base import ENV_NAMES, SecretSource, check_path, env_name
from .env import EnvSecrets

# -- which source, and the values read so far ---------------------------------------------

_lock = threading.Lock()
_source: SecretSource | None = None
_cache: dict[str, Mapping[str, str]] = {}


def secret_source() -> SecretSource:
    """The configured source (``CARAVAN_SECRETS`` or ``[caravan] secrets``), built once per process."""
    global _source
    with _lock:
        if _source is None:
            kind = setting("CARAVAN_SECRETS", section(caravan).secrets)
            if kind == "env":
                _source = EnvSecrets()
            elif kind == "vault":
                from .vault import VaultSecrets

                _source = VaultSecrets()
            else:
                raise ConfigurationError(f"unknown secret source {kind!r} (CARAVAN_SECRETS / [caravan] secrets): "
                                         "use 'env' or 'vault'")
        return _source


def reset() -> None:
    """Forget the source and cached reads (tests; after changing the configuration). Redaction remembers on."""
    global _source
    with _lock:
        _source = None
        _cache.clear()


def get_secret(path: str, field: str) -> str | None:
    """One secret field, or None when the field is absent.

    The environment variable for it wins when set. Otherwise the configured source is asked;
    with the ``vault`` source a missing path is an error (:class:`SecretNotFound`), a missing
    field is None (optional fields such as ``webhdfs_token``).
    """
    check_path(path)
    value = os.environ.get(env_name(path, field))
    if not value:
        source = secret_source()
        if source.name == "env":
            return None
        with _lock:
            fields = _cache.get(path)
        if fields is None:
            fields = source.read(path)
            with _lock:
                _cache[path] = fields
        value = fields.get(field)
    if value:
        remember(value)
    return value or None


def require_secret(path: str, field: str) -> str:
    """One secret field that must exist; SecretNotFound names the path, field and where it was looked for."""
    value = get_secret(path, field)
    if value is None:
        where = secret_source().describe()
        raise SecretNotFound(path, field, source=f"{where} (or env {env_name(path, field)})")
    return value


__all__ = [
    "ENV_NAMES",
    "MIN_REDACTED_LENGTH",
    "REDACTED",
    "EnvSecrets",
    "SecretSource",
    "check_path",
    "env_name",
    "get_secret",
    "redact",
    "remember",
    "require_secret",
    "reset",
    "secret_source",
]
