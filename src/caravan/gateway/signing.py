"""Request ids that carry their arm and cannot be forged: what ``POST /feedback`` trusts.

A request id is ``r1.<arm>.<experiment>.<time>.<nonce>.<mac>``: the arm name (base64url, so any name fits),
a tag of the experiment that assigned it (a hash of its salt, so feedback for an experiment that has ended
is told apart), the issue time (hex seconds), a random nonce, and an HMAC-SHA256 over all of that with the
gateways' shared key (truncated to 128 bits, base64url). base64url never uses ``.``, so the parts split
unambiguously; the whole id is printable ASCII of at most 128 characters for arm names of up to 48 bytes.

The key is the environment variable ``CARAVAN_SECRET_GATEWAY_SIGNING_KEY`` (what ``nomad/gateway.nomad.hcl``
renders from Vault), else caravan's secrets source at path ``serving``, field ``gateway_signing_key`` (Vault:
``secret/data/caravan/<env>/serving``, where the job reads it). Every gateway of a model must share it so that
any of them accepts feedback for a request another one answered. It is never logged, and errors never quote it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass

log = logging.getLogger("caravan.gateway")

SECRET_PATH, SECRET_FIELD = "serving", "gateway_signing_key"
ENV_VAR = "CARAVAN_SECRET_GATEWAY_SIGNING_KEY"
MIN_KEY_BYTES = 16
_VERSION = "r1"
_MAC_BYTES = 16
MAX_ARM_BYTES = 48  # keeps a request id within 128 characters, the length caravan serve accepts


class RequestIdInvalid(ValueError):
    """A request id that this gateway did not issue (malformed, or its signature does not match)."""


@dataclass(frozen=True)
class Issued:
    """What a verified request id says: the arm that answered, the experiment's tag, the time it was issued."""

    arm: str
    experiment: str
    issued_at: int
    request_id: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise RequestIdInvalid("the request id is not ASCII")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise RequestIdInvalid("the request id is malformed") from None


def experiment_tag(salt: str) -> str:
    """A short tag naming an experiment (by its salt) inside request ids; "none" outside any experiment."""
    return hashlib.sha256(salt.encode("utf-8")).hexdigest()[:12] if salt else "none"


class RequestSigner:
    """Issues and verifies signed request ids with one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the request-id signing key must be at least {MIN_KEY_BYTES} bytes")
        self._key = key

    def __repr__(self) -> str:  # never the key
        return "RequestSigner(<key>)"

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest()[:_MAC_BYTES])

    def issue(self, arm: str, experiment: str, now: float | None = None) -> str:
        """A new request id for a request answered by ``arm`` of ``experiment`` (a tag)."""
        encoded = arm.encode("utf-8")
        if len(encoded) > MAX_ARM_BYTES:
            raise ValueError(f"arm name over {MAX_ARM_BYTES} bytes")
        payload = ".".join((_VERSION, _b64(encoded), experiment, format(int(now if now is not None else time.time()),
                                                                          "x"), os.urandom(6).hex()))
        return f"{payload}.{self._mac(payload)}"

    def verify(self, request_id: str) -> Issued:
        """The arm, experiment and time a request id carries; :class:`RequestIdInvalid` if this key did not sign it."""
        parts = request_id.split(".")
        if len(parts) != 6 or parts[0] != _VERSION or not request_id.isascii():
            raise RequestIdInvalid("the request id is not one this gateway issued (malformed)")
        payload, mac = request_id.rsplit(".", 1)
        if not hmac.compare_digest(self._mac(payload), mac):
            raise RequestIdInvalid("the request id's signature does not match (forged, or signed with another key)")
        try:
            arm = _unb64(parts[1]).decode("utf-8")
            issued_at = int(parts[3], 16)
        except (UnicodeDecodeError, ValueError):  # only reachable with the key: a gateway of another version
            raise RequestIdInvalid("the request id is malformed") from None
        return Issued(arm, parts[2], issued_at, request_id)


def signer_from_secrets() -> tuple[RequestSigner, bool]:
    """The signer with the key from caravan's secrets source, and whether that key was configured.

    With no key configured the gateway signs with a random key of its own, so feedback is accepted only by
    the gateway that answered the request (fine on a laptop, not behind a load balancer): a warning says so.
    A key that is configured but too short is an error (it would be guessable).
    """
    from ..errors import ConfigurationError
    from ..secrets import get_secret, remember

    value = os.environ.get(ENV_VAR)
    if value:
        remember(value)  # redacted wherever it might be quoted, as every secret read is
    else:
        value = get_secret(SECRET_PATH, SECRET_FIELD)
    if value is None:
        log.warning("no request-id signing key (env %s, or secret %s/%s): using a random key of this process; "
                    "feedback is accepted only by this gateway", ENV_VAR, SECRET_PATH, SECRET_FIELD)
        return RequestSigner(os.urandom(32)), False
    key = value.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigurationError(f"the request-id signing key (secret {SECRET_PATH}/{SECRET_FIELD}) is shorter "
                                 f"than {MIN_KEY_BYTES} bytes")
    return RequestSigner(key), True
