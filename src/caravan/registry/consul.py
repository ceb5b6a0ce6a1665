"""The Consul pointer backend (py-consul): check-and-set on the key's ModifyIndex, blocking-query watches.

Reaching Consul (address, token, timeouts, error classification) is :mod:`caravan.consul_api`'s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..config import section
from ..consul_api import ConsulAPI, consul
from ..errors import BackendRejected, BackendUnavailable, PointerConflict, PromotionLocked
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


class ConsulPointer(ConsulAPI, ModelPointer):
    """Model pointers in Consul KV, under ``caravan/<env>/models/``."""

    name = "consul"

    def _state(self, model: str, index: Any, data: Any) -> PointerState:
        if data is None:
            return PointerState(None, 0, int(index or 0))
        version, position = int(data["ModifyIndex"]), int(index or 0)
        document = parse_document(model, data.get("Value"), version=version, index=position,
                                  where=f"{current_key(model, self.environment)} in consul {self.address}")
        return PointerState(document, version, position)

    def read(self, model: str) -> PointerState:
        key = current_key(model, self.environment)
        index, data = self.call(f"GET {key}", self.client.kv.get, key)
        return self._state(model, index, data)

    def compare_and_set(self, model: str, document: dict[str, Any], expected_version: int) -> int | None:
        key = current_key(model, self.environment)
        body = encode(document)
        if not self.call(f"PUT {key}?cas={expected_version}", self.client.kv.put, key, body, cas=expected_version):
            return None
        # The PUT answers only true: read the new ModifyIndex (if someone wrote since, theirs is newer anyway).
        _, data = self.call(f"GET {key}", self.client.kv.get, key)
        return max(int(data["ModifyIndex"]) if data else 0, expected_version + 1)

    def record(self, model: str, document: dict[str, Any]) -> None:
        key = history_key(model, str(document["change_id"]), self.environment)
        self.call(f"PUT {key}?cas=0", self.client.kv.put, key, encode(document), cas=0)

    def history(self, model: str) -> list[dict[str, Any]]:
        prefix = history_prefix(model, self.environment)
        _, entries = self.call(f"GET {prefix}?recurse", self.client.kv.get, prefix, recurse=True)
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
        session = self.call("PUT /v1/session/create", self.client.session.create,
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
                        self.call(f"PUT /v1/session/renew/{session}", self.client.session.renew, session)
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
                self.call(what, call)
            except (BackendRejected, BackendUnavailable) as exc:
                (log.warning if quiet else log.error)("model %s: %s failed; the session's TTL frees the lock: %s",
                                                      model, what, exc)

    def _acquire(self, key: str, session: str, holder: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        index = 0
        while not self.call(f"PUT {key}?acquire", self.client.kv.put, key, holder, acquire=session):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _, data = self.call(f"GET {key}", self.client.kv.get, key)
                by = (data or {}).get("Value") or b"?"
                raise PromotionLocked(f"the promotion lock {key} is held by {by.decode(errors='replace')} "
                                      f"for longer than {timeout_s:g} s")
            new_index, data = self.call(f"GET {key}?index={index}", self.client.kv.get, key, index=index or None,
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
            new_index, data = self.call(f"GET {key}?index={index}", self.client.kv.get, key, index=index,
                                         wait=f"{wait}s")
            current = self._state(model, new_index, data)
            if current.version != state.version:
                return current
            # A lower index means the store was reset or restored: start over from 0 (then 1).
            index = 1 if int(new_index or 0) < index else max(1, int(new_index or 0))
