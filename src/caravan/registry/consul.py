"""The Consul pointer backend (py-consul): check-and-set on the key's ModifyIndex, blocking-query watches.

Address from ``CONSUL_HTTP_ADDR`` (wins) or ``[consul] address``; the token from
``CONSUL_HTTP_TOKEN``, which py-consul reads itself (and which wins over any token argument).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import luigi

from ..config import section, setting
from ..errors import BackendRejected, BackendUnavailable, ConfigurationError
from .base import ModelPointer, PointerState, current_key, encode, history_key, history_prefix


class consul(luigi.Config):  # noqa: N801 - the class name is the luigi.cfg section name
    """``[consul]``: how to reach Consul. ``CONSUL_HTTP_ADDR`` and ``CONSUL_HTTP_TOKEN`` win."""

    address = luigi.Parameter(default="http://127.0.0.1:8500", description="Consul HTTP API address.")
    cacert = luigi.Parameter(default="", description="CA bundle for Consul's TLS certificate (CONSUL_CACERT wins).")
    watch_wait_s = luigi.IntParameter(default=60, description="Longest single blocking query of a watch.")


def _client(address: str, token: str | None = None) -> Any:
    import consul as py_consul

    parsed = urlparse(address if "://" in address else f"http://{address}")
    if not parsed.hostname:
        raise ConfigurationError(f"Consul address {address!r} names no host")
    cacert = setting("CONSUL_CACERT", section(consul).cacert)
    return py_consul.Consul(host=parsed.hostname, port=parsed.port or (443 if parsed.scheme == "https" else 8500),
                            scheme=parsed.scheme or "http", token=token, verify=cacert or True)


class ConsulPointer(ModelPointer):
    """Model pointers in Consul KV."""

    name = "consul"

    def __init__(self, address: str | None = None, token: str | None = None) -> None:
        self.address = address or setting("CONSUL_HTTP_ADDR", section(consul).address)
        if token is None:
            from ..secrets import get_secret

            token = get_secret("consul", "token")
        self.client = _client(self.address, token)
        self.wait_s = int(section(consul).watch_wait_s)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import consul as py_consul
        import requests

        try:
            return fn(*args, **kwargs)
        except (requests.RequestException, py_consul.Timeout) as exc:
            raise BackendUnavailable(f"{what}: {exc}", backend=f"consul {self.address}") from exc
        except (py_consul.ACLPermissionDenied, py_consul.ACLDisabled) as exc:
            raise BackendRejected(f"{what}: permission denied ({exc})", backend=f"consul {self.address}") from exc
        except py_consul.ConsulException as exc:
            text = str(exc)
            retryable = text[:1] == "5" or "429" in text[:4]
            error = BackendUnavailable if retryable else BackendRejected
            raise error(f"{what}: {text}", backend=f"consul {self.address}") from exc

    def _state(self, index: Any, data: Any) -> PointerState:
        if data is None:
            return PointerState(None, 0, int(index or 0))
        return PointerState(json.loads(data["Value"] or b"null"), int(data["ModifyIndex"]), int(index or 0))

    def read(self, model: str) -> PointerState:
        key = current_key(model)
        index, data = self._call(f"GET {key}", self.client.kv.get, key)
        return self._state(index, data)

    def compare_and_set(self, model: str, document: dict[str, Any], expected_version: int) -> int | None:
        key = current_key(model)
        body = encode(document)
        if not self._call(f"PUT {key}?cas={expected_version}", self.client.kv.put, key, body, cas=expected_version):
            return None
        # The PUT answers only true: read the new ModifyIndex (if someone wrote since, theirs is newer anyway).
        index, data = self._call(f"GET {key}", self.client.kv.get, key)
        return max(self._state(index, data).version, expected_version + 1)

    def record(self, model: str, document: dict[str, Any]) -> None:
        key = history_key(model, str(document["change_id"]))
        self._call(f"PUT {key}?cas=0", self.client.kv.put, key, encode(document), cas=0)

    def history(self, model: str) -> list[dict[str, Any]]:
        prefix = history_prefix(model)
        _, entries = self._call(f"GET {prefix}?recurse", self.client.kv.get, prefix, recurse=True)
        return [json.loads(e["Value"]) for e in sorted(entries or [], key=lambda e: e["Key"]) if e.get("Value")]

    def watch(self, model: str, state: PointerState, timeout_s: float) -> PointerState:
        key = current_key(model)
        deadline = time.monotonic() + timeout_s
        index = max(1, state.index)  # Consul's rule: never block on an index below 1
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self.read(model)
            wait = max(1, int(min(self.wait_s, remaining)))
            new_index, data = self._call(f"GET {key}?index={index}", self.client.kv.get, key, index=index,
                                         wait=f"{wait}s")
            current = self._state(new_index, data)
            if current.version != state.version:
                return current
            # A lower index means the store was reset or restored: start over from 0 (then 1).
            index = 1 if int(new_index or 0) < index else max(1, int(new_index or 0))
