"""Secret sources: the environment by default, Vault when configured.

A secret is named by a path and a field, the same names everywhere::

    storage   aws_access_key_id, aws_secret_access_key, webhdfs_token
    consul    token
    nomad     token
    serving   consul_token

In Vault (KV v2) they live at ``<mount>/data/<prefix>/<path>`` (``secret/data/caravan/storage``).
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
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping

from ..config import caravan, section, setting
from ..errors import ConfigurationError, SecretNotFound
from ..redaction import MIN_REDACTED_LENGTH, REDACTED, redact, remember

# (path, field) -> the environment variable that carries it in a Nomad task and on a laptop.
ENV_NAMES: dict[tuple[str, str], str] = {
    ("storage", "aws_access_key_id"): "AWS_ACCESS_KEY_ID",
    ("storage", "aws_secret_access_key"): "AWS_SECRET_ACCESS_KEY",
    ("storage", "webhdfs_token"): "CARAVAN_WEBHDFS_TOKEN",
    ("consul", "token"): "CONSUL_HTTP_TOKEN",
    ("nomad", "token"): "NOMAD_TOKEN",
    ("serving", "consul_token"): "CONSUL_HTTP_TOKEN",
}

_SAFE_PATH = re.compile(r"[a-z0-9][a-z0-9_.-]*(/[a-z0-9][a-z0-9_.-]*)*")


def check_path(path: str) -> str:
    """A secret path is lower-case segments separated by ``/``: no ``..``, no leading slash."""
    if not _SAFE_PATH.fullmatch(path) or any(part in (".", "..") for part in path.split("/")):
        raise ConfigurationError(f"secret path {path!r} is not of the form 'name' or 'name/sub' (lower case)")
    return path


def env_name(path: str, field: str) -> str:
    """The environment variable for one secret field: the well-known name, else ``CARAVAN_SECRET_<PATH>_<FIELD>``."""
    known = ENV_NAMES.get((path, field))
    if known:
        return known
    return "CARAVAN_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", f"{path}_{field}").upper()


class SecretSource(ABC):
    """Where secrets come from. ``read`` returns every field at a path or raises :class:`SecretNotFound`."""

    name: str

    @abstractmethod
    def read(self, path: str) -> Mapping[str, str]:
        """The fields at ``path``; raises SecretNotFound (naming the path) when there is nothing there."""

    def describe(self) -> str:
        return self.name


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
        return fields

    def describe(self) -> str:
        return "the environment"


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
