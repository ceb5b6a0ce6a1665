"""Secrets from Vault (or OpenBao) KV v2, through hvac.

Authentication, first that applies:

* ``VAULT_TOKEN`` (what a Nomad task with a ``vault`` block gets);
* AppRole: ``VAULT_ROLE_ID`` / ``[vault] role_id`` with ``VAULT_SECRET_ID`` or the file named by
  ``[vault] secret_id_file`` (CI, laptops);
* hvac's own default, the token file ``~/.vault-token`` that ``vault login`` / ``bao login`` writes.

Tokens expire. Before each read the source renews a renewable token once less than half of
its TTL is left, and logs in again with AppRole when renewal is impossible or a read is refused
for an expired token. Errors name Vault's address and the secret's path, never a token or a value.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import luigi

from ..config import check_environment, section, setting
from ..config import environment as config_environment
from ..errors import BackendUnavailable, ConfigurationError, SecretAccessDenied, SecretNotFound
from ..redaction import remember
from .base import SecretSource, check_path

log = logging.getLogger(__name__)


class vault(luigi.Config):  # noqa: N801 - the class name is the luigi.cfg section name
    """``[vault]``: where caravan's secrets live in Vault and how to log in (no secret is ever set here)."""

    address = luigi.Parameter(default="http://127.0.0.1:8200", description="Vault address; env VAULT_ADDR wins.")
    mount = luigi.Parameter(default="secret", description="Mount point of the KV v2 engine.")
    prefix = luigi.Parameter(default="caravan", description="Folder of caravan's secrets under the mount; each "
                             "environment has its own folder in it (<prefix>/<environment>/).")
    namespace = luigi.Parameter(default="", description="Vault Enterprise namespace; env VAULT_NAMESPACE wins.")
    cacert = luigi.Parameter(default="", description="CA bundle for Vault's TLS certificate; env VAULT_CACERT wins.")
    role_id = luigi.Parameter(default="", description="AppRole role id (not a secret); env VAULT_ROLE_ID wins.")
    secret_id_file = luigi.Parameter(
        default="", description="File holding the AppRole secret id; env VAULT_SECRET_ID (the value) wins.")
    auth_mount = luigi.Parameter(default="approle", description="Mount point of the AppRole auth method.")
    timeout_s = luigi.FloatParameter(default=10.0, description="Timeout of one request to Vault.")


class VaultSecrets(SecretSource):
    """KV v2 secrets at ``<mount>/data/<prefix>/<environment>/<path>`` (``secret/data/caravan/production/storage``):
    one environment's roles never read another's secrets."""

    name = "vault"

    def __init__(self, address: str | None = None, token: str | None = None, *, role_id: str | None = None,
                 secret_id: str | None = None, environment: str | None = None) -> None:
        """``environment``: whose secrets (default: the one in effect, :func:`caravan.config.environment`)."""
        import hvac  # imported here: `import caravan` must not pay for hvac when Vault is not configured

        cfg = section(vault)
        self.address = address or setting("VAULT_ADDR", cfg.address)
        self.mount = cfg.mount.strip("/")
        self.environment = check_environment(environment) if environment else config_environment()
        # The folder of this environment's secrets: <prefix>/<environment>, or <environment> without a prefix.
        self.prefix = "/".join(part for part in (cfg.prefix.strip("/"), self.environment) if part)
        self.auth_mount = cfg.auth_mount
        self.role_id = role_id or setting("VAULT_ROLE_ID", cfg.role_id) or None
        self._secret_id = secret_id
        token = token or setting("VAULT_TOKEN", "") or None
        cacert = setting("VAULT_CACERT", cfg.cacert)
        self.client = hvac.Client(url=self.address, token=token, verify=cacert or True,
                                  namespace=setting("VAULT_NAMESPACE", cfg.namespace) or None,
                                  timeout=float(cfg.timeout_s))
        self._lock = threading.Lock()
        self._ttl_s = 0.0           # the token's TTL when last issued or renewed; 0 = never expires
        self._expires_at = 0.0      # monotonic deadline; 0 = never expires
        self._renewable = False
        self.logins = 0
        self.renewals = 0
        if token is None and self.role_id:
            self._login()
        else:
            self._lookup()

    def describe(self) -> str:
        return f"Vault at {self.address}"

    # -- authentication ---------------------------------------------------------------------

    def _secret_id_value(self) -> str:
        if self._secret_id:
            return self._secret_id
        value = setting("VAULT_SECRET_ID", "")
        path = section(vault).secret_id_file
        if not value and path:
            try:
                value = Path(path).read_text().strip()
            except OSError as exc:
                raise ConfigurationError(f"[vault] secret_id_file {path}: {exc.strerror}") from None
        if not value:
            raise ConfigurationError(f"{self.describe()}: AppRole role id is set but no secret id "
                                     "(VAULT_SECRET_ID or [vault] secret_id_file)")
        return value

    def _track(self, ttl_s: float, renewable: bool) -> None:
        self._ttl_s = float(ttl_s)
        self._expires_at = time.monotonic() + self._ttl_s if self._ttl_s > 0 else 0.0
        self._renewable = bool(renewable)

    def _login(self) -> None:
        import hvac.exceptions as hx

        try:
            reply = self._guard("log in with AppRole", "", lambda: self.client.auth.approle.login(
                self.role_id, secret_id=self._secret_id_value(), mount_point=self.auth_mount))
        except hx.InvalidRequest:
            raise SecretAccessDenied(f"{self.describe()}: AppRole login refused (invalid role id or secret id)",
                                     source="vault") from None
        auth = reply["auth"]
        self.logins += 1
        self._track(auth.get("lease_duration") or 0, auth.get("renewable", False))
        log.info("logged in to %s with AppRole (token TTL %ss)", self.address, auth.get("lease_duration"))

    def _lookup(self) -> None:
        """Learn the given token's TTL; a token Vault does not know is refused here, before any read."""
        import hvac.exceptions as hx

        if not self.client.token:
            raise ConfigurationError(f"{self.describe()}: no token (VAULT_TOKEN, ~/.vault-token) and no AppRole "
                                     "role id (VAULT_ROLE_ID or [vault] role_id)")
        try:
            data = self._guard("look up its token", "", self.client.auth.token.lookup_self)["data"]
        except (hx.Forbidden, hx.Unauthorized, hx.InvalidRequest):
            raise SecretAccessDenied(f"{self.describe()} refused the token (unknown, revoked or expired)",
                                     source="vault") from None
        self._track(data.get("ttl") or 0, data.get("renewable", False))

    def _refresh(self) -> None:
        """Renew (or log in again) once less than half of the token's TTL is left."""
        import hvac.exceptions as hx

        if not self._expires_at or self._expires_at - time.monotonic() > self._ttl_s / 2:
            return
        if self._renewable:
            try:
                auth = self._guard("renew its token", "", self.client.auth.token.renew_self)["auth"]
            except (hx.Forbidden, hx.InvalidRequest, hx.Unauthorized):
                auth = None  # expired already, or past its max TTL
            if auth and auth.get("lease_duration"):
                self.renewals += 1
                self._track(auth["lease_duration"], auth.get("renewable", False))
                if self._ttl_s > 1:
                    return
        if self.role_id:
            self._login()

    def _guard(self, what: str, path: str, call: Any) -> Any:
        """Run one hvac call, turning transport failures into BackendUnavailable."""
        import requests

        try:
            return call()
        except requests.RequestException as exc:
            where = f" {path}" if path else ""
            raise BackendUnavailable(f"{self.describe()}: could not {what}{where}: {type(exc).__name__}",
                                     backend="vault") from None

    # -- reading ----------------------------------------------------------------------------

    def full_path(self, path: str) -> str:
        return f"{self.mount}/data/{self.prefix}/{check_path(path)}" if self.prefix else \
            f"{self.mount}/data/{check_path(path)}"

    def read(self, path: str) -> Mapping[str, str]:
        import hvac.exceptions as hx

        full = self.full_path(path)
        relative = f"{self.prefix}/{path}" if self.prefix else path
        with self._lock:
            self._refresh()
            for attempt in (1, 2):
                try:
                    reply = self._guard("read", full, lambda: self.client.secrets.kv.v2.read_secret_version(
                        relative, mount_point=self.mount, raise_on_deleted_version=True))
                    break
                except hx.InvalidPath:
                    raise SecretNotFound(full, source=self.describe()) from None
                except (hx.Forbidden, hx.Unauthorized) as exc:
                    # An expired token reads as "permission denied" too: log in again once, if we can.
                    if attempt == 1 and self.role_id:
                        self._login()
                        continue
                    reason = "permission denied" if isinstance(exc, hx.Forbidden) else "unauthorized"
                    raise SecretAccessDenied(f"{self.describe()} refused to read {full}: {reason} (the token is "
                                             "invalid or expired, or its policies do not cover this path)",
                                             path=full, source="vault") from None
                except hx.VaultError as exc:
                    raise BackendUnavailable(f"{self.describe()}: reading {full} failed with "
                                             f"{type(exc).__name__}", backend="vault") from None
        data = (reply.get("data") or {}).get("data") or {}
        fields = {str(k): str(v) for k, v in data.items() if v is not None}
        for value in fields.values():
            remember(value)
        return fields
