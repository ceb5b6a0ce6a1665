"""What every secret source shares: how secrets are named (path, field, environment variable) and the interface."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping

from ..errors import ConfigurationError

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
        """Where this source looks, for error messages."""
        return self.name
