"""The Consul pointer backend (py-consul): check-and-set on the key's ModifyIndex, blocking-query watches.

Address from ``CONSUL_HTTP_ADDR`` (wins) or ``[consul] address``; the token from
``CONSUL_HTTP_TOKEN``, which py-consul reads itself (and which wins over any token argument).

Every request has a read timeout (``[consul] timeout_s``; py-consul >= 1.8 adds a blocking query's
wait and its jitter on top), so a half-open connection fails the call instead of hanging a watch.
Errors are classified by HTTP status: 429, 5xx and no answer are :class:`BackendUnavailable`
(retryable), other 4xx :class:`BackendRejected`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import luigi

from ..config import check_environment, section, setting
from ..config import environment as config_environment
from ..errors import BackendRejected, BackendUnavailable, ConfigurationError, PointerConflict, PromotionLocked
from .base import (
    ModelPointer,
    PointerState,
    current_key,
    encode,
    excerpt,
    history_key,
    history_prefix,
    lock_key,
    parse_document,
)

log = logging.getLogger(__name__)


class consul(luigi.Config):  # noqa: N801 - the class name is the luigi.cfg section name
    """``[consul]``: how to reach Consul. ``CONSUL_HTTP_ADDR`` and ``CONSUL_HTTP_TOKEN`` win."""

    address = luigi.Parameter(default="http://127.0.0.1:8500", description="Consul HTTP API address.")
    cacert = luigi.Parameter(default="", description="CA bundle for Consul's TLS certificate (CONSUL_CACERT wins).")
    watch_wait_s = luigi.IntParameter(default=60, description="Longest single blocking query of a watch.")
    timeout_s = luigi.FloatParameter(default=30.0, description="Read timeout of every request; a blocking query "
                                     "gets its wait (plus Consul's wait/16 jitter) on top.")
    lock_ttl_s = luigi.IntParameter(default=15, description="TTL of the promotion lock's session (10-86400 s); "
                                    "renewed every third of it while held.")
    lock_delay_s = luigi.IntParameter(default=15, description="Consul lock-delay after a holder's session "
                                      "is invalidated (a crashed holder's lock waits this long).")


def _client(address: str, token: str | None = None, timeout_s: float | None = None) -> Any:
    import consul as py_consul

    parsed = urlparse(address if "://" in address else f"http://{address}")
    if not parsed.hostname:
        raise ConfigurationError(f"Consul address {address!r} names no host")
    cacert = setting("CONSUL_CACERT", section(consul).cacert)
    if cacert and os.path.isfile(cacert) and os.path.getsize(cacert) == 0:
        # The specs render Consul's CA from caravan/<env>/tls/consul-ca.pem, empty where Consul has no TLS.
        cacert = ""
    # connections_timeout (py-consul >= 1.8) is the read timeout; for a blocking query py-consul adds
    # the wait and its jitter, so a watch never times out before Consul answers it.
    return py_consul.Consul(host=parsed.hostname, port=parsed.port or (443 if parsed.scheme == "https" else 8500),
                            scheme=parsed.scheme or "http", token=token, verify=cacert or True,
                            connections_timeout=float(timeout_s or section(consul).timeout_s))


_STATUS = re.compile(r"(\d{3})\b")


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of a py-consul error: from its class, or the "<code> <body>" it is raised with.

    None when Consul gave no status to classify (no answer, or an answer that is not Consul's JSON).
    """
    import consul as py_consul

    by_class = {py_consul.ACLDisabled: 401, py_consul.ACLPermissionDenied: 403, py_consul.NotFound: 404}
    for cls, status in by_class.items():
        if isinstance(exc, cls):
            return status
    if isinstance(exc, py_consul.ConsulException):
        # py-consul's callback raises BadRequest, ClientError and ConsulException as f"{code} {body}".
        match = _STATUS.match(str(exc))
        if match:
            return int(match.group(1))
    return None


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ConsulPointer(ModelPointer):
    """Model pointers in Consul KV."""

    name = "consul"

    def __init__(self, address: str | None = None, token: str | None = None, timeout_s: float | None = None,
                 environment: str | None = None) -> None:
        """``timeout_s``: the read timeout of each request (default ``[consul] timeout_s``); ``environment``: whose
        pointers, under ``caravan/<env>/models/`` (default: the one in effect, :func:`caravan.config.environment`)."""
        self.environment = check_environment(environment) if environment else config_environment()
        self.address = address or setting("CONSUL_HTTP_ADDR", section(consul).address)
        if token is None:
            from ..secrets import get_secret

            token = get_secret("consul", "token")
        self.client = _client(self.address, token, timeout_s)
        self.wait_s = int(section(consul).watch_wait_s)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import consul as py_consul
        import requests

        backend = f"consul {self.address}"
        try:
            return fn(*args, **kwargs)
        except (requests.RequestException, py_consul.Timeout) as exc:
            raise BackendUnavailable(f"{what}: no answer ({type(exc).__name__}: {_one_line(str(exc))})",
                                     backend=backend) from exc
        except py_consul.ConsulException as exc:
            status = status_of(exc)
            text = _one_line(str(exc))
            if status is None:  # an answer, but not Consul's (a proxy's page, a cut body): retry later
                raise BackendUnavailable(f"{what}: the answer is not Consul's ({text})", backend=backend) from exc
            if status == 429 or status >= 500:
                raise BackendUnavailable(f"{what}: HTTP {status} ({text})", backend=backend) from exc
            if status in (401, 403):
                raise BackendRejected(f"{what}: permission denied, HTTP {status} ({text})", backend=backend) from exc
            raise BackendRejected(f"{what}: HTTP {status} ({text})", backend=backend) from exc

    def _state(self, model: str, index: Any, data: Any) -> PointerState:
        if data is None:
            return PointerState(None, 0, int(index or 0))
        version, position = int(data["ModifyIndex"]), int(index or 0)
        document = parse_document(model, data.get("Value"), version=version, index=position,
                                  where=f"{current_key(model, self.environment)} in consul {self.address}")
        return PointerState(document, version, position)

    def read(self, model: str) -> PointerState:
        key = current_key(model, self.environment)
        index, data = self._call(f"GET {key}", self.client.kv.get, key)
        return self._state(model, index, data)

    def compare_and_set(self, model: str, document: dict[str, Any], expected_version: int) -> int | None:
        key = current_key(model, self.environment)
        body = encode(document)
        if not self._call(f"PUT {key}?cas={expected_version}", self.client.kv.put, key, body, cas=expected_version):
            return None
        # The PUT answers only true: read the new ModifyIndex (if someone wrote since, theirs is newer anyway).
        _, data = self._call(f"GET {key}", self.client.kv.get, key)
        return max(int(data["ModifyIndex"]) if data else 0, expected_version + 1)

    def record(self, model: str, document: dict[str, Any]) -> None:
        key = history_key(model, str(document["change_id"]), self.environment)
        self._call(f"PUT {key}?cas=0", self.client.kv.put, key, encode(document), cas=0)

    def history(self, model: str) -> list[dict[str, Any]]:
        prefix = history_prefix(model, self.environment)
        _, entries = self._call(f"GET {prefix}?recurse", self.client.kv.get, prefix, recurse=True)
        history = []
        for item in sorted(entries or [], key=lambda e: e["Key"]):
            try:
                entry = json.loads(item.get("Value") or b"null")
            except ValueError:
                entry = None
            if isinstance(entry, dict):
                history.append(entry)
            else:
                log.warning("model %s: history entry %s is unreadable (%s); skipped", model, item["Key"],
                            excerpt(item.get("Value")))
        return history

    @contextlib.contextmanager
    def lock(self, model: str, holder: str, timeout_s: float) -> Iterator[None]:
        """A Consul lock: a TTL session (renewed in the background) acquires ``caravan/<env>/models/M/lock``.

        The session's behaviour is ``delete``: if the holder dies and stops renewing, Consul
        invalidates the session after its TTL and deletes the key, and the next holder gets the
        lock after the lock-delay. Waiting for a held lock is a blocking query on the key.
        """
        cfg = section(consul)
        key = lock_key(model, self.environment)
        ttl = max(10, min(int(cfg.lock_ttl_s), 86400))
        session = self._call("PUT /v1/session/create", self.client.session.create,
                             name=f"caravan-{self.environment}-promote-{model}",
                             behavior="delete", ttl=ttl, lock_delay=max(0, int(cfg.lock_delay_s)))
        lost = threading.Event()
        stop = threading.Event()
        renewer: threading.Thread | None = None
        body_failed = False
        try:
            self._acquire(key, session, holder, timeout_s)

            def renew() -> None:
                while not stop.wait(ttl / 3):
                    try:
                        self._call(f"PUT /v1/session/renew/{session}", self.client.session.renew, session)
                    except BackendRejected as exc:  # 404: the session is gone; 403: no longer ours to renew
                        log.error("model %s: lost the promotion lock %s (%s)", model, key, exc)
                        lost.set()
                        return
                    except BackendUnavailable as exc:
                        log.warning("model %s: renewing the lock session failed, retrying: %s", model, exc)

            renewer = threading.Thread(target=renew, name=f"consul-lock-{model}", daemon=True)
            renewer.start()
            try:
                yield
            except BaseException:
                body_failed = True
                raise
            if lost.is_set():
                raise PointerConflict(f"model {model!r}: the promotion lock {key} was lost while held "
                                      "(session invalidated); the decision made under it is suspect")
        finally:
            stop.set()
            if renewer is not None:
                renewer.join(timeout=5)
            self._release(model, key, holder, session, quiet=body_failed)

    def _release(self, model: str, key: str, holder: str, session: str, *, quiet: bool) -> None:
        """Release the lock and destroy its session; a failure never hides the block's own error.

        Destroying the session releases the key too (behaviour ``delete``), and a session left
        behind expires after its TTL, so a failed release is logged, not raised.
        """
        for what, call in ((f"PUT {key}?release", lambda: self.client.kv.put(key, holder, release=session)),
                           (f"PUT /v1/session/destroy/{session}", lambda: self.client.session.destroy(session))):
            try:
                self._call(what, call)
            except (BackendRejected, BackendUnavailable) as exc:
                (log.warning if quiet else log.error)("model %s: %s failed; the session's TTL frees the lock: %s",
                                                      model, what, exc)

    def _acquire(self, key: str, session: str, holder: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        index = 0
        while not self._call(f"PUT {key}?acquire", self.client.kv.put, key, holder, acquire=session):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _, data = self._call(f"GET {key}", self.client.kv.get, key)
                by = (data or {}).get("Value") or b"?"
                raise PromotionLocked(f"the promotion lock {key} is held by {by.decode(errors='replace')} "
                                      f"for longer than {timeout_s:g} s")
            new_index, data = self._call(f"GET {key}?index={index}", self.client.kv.get, key, index=index or None,
                                         wait=f"{max(1, int(min(self.wait_s, remaining)))}s")
            if data is None or not data.get("Session"):
                # Free but refused: the lock-delay of an invalidated session. Do not spin.
                time.sleep(min(1.0, max(0.05, remaining)))
                index = 0
            else:
                new = int(new_index or 0)
                index = 0 if new < index else new

    def watch(self, model: str, state: PointerState, timeout_s: float) -> PointerState:
        key = current_key(model, self.environment)
        deadline = time.monotonic() + timeout_s
        index = max(1, state.index)  # Consul's rule: never block on an index below 1
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self.read(model)
            wait = max(1, int(min(self.wait_s, remaining)))
            new_index, data = self._call(f"GET {key}?index={index}", self.client.kv.get, key, index=index,
                                         wait=f"{wait}s")
            current = self._state(model, new_index, data)
            if current.version != state.version:
                return current
            # A lower index means the store was reset or restored: start over from 0 (then 1).
            index = 1 if int(new_index or 0) < index else max(1, int(new_index or 0))
