"""Following the model pointer: load each new model beside the old one and swap, without ever dying.

The watcher thread reads the pointer (Consul blocking queries, or a poll of the pointer file). A new
target — a different artifact id *or* URI — is read from the store, loaded and scored in the probe
process first unless this server has loaded it before (see :mod:`caravan.serving.probe`), then
loaded here and swapped in. A model that fails or kills the probe is refused, counted and named in
``/health``; the old model keeps serving. At start-up, with nothing served yet, a refused current model
makes the watcher serve the newest model of the pointer's history that loads (``degraded``); with none,
``/health`` is 503 with the reason.

Any error while reading, parsing or applying the pointer (a backend away, a truncated or garbled
document, a store that times out) is logged, counted (``caravan_pointer_errors``), shown in ``/health``
(``degraded``, ``last_error``) and retried with exponential backoff. Only ``stop()`` ends the thread.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Protocol

from ..errors import CaravanError
from ..registry import PointerState
from ..registry.base import lineage
from ..step import artifact_at
from .model import LoadedModel, ModelHolder, ModelUnsound, build_model, read_model_files
from .observe import Metrics
from .probe import Probe

log = logging.getLogger("caravan.serving")

_REMEMBERED = 256  # models known good, and models refused, kept per server


class PointerSource(Protocol):
    """What the watcher follows: a model pointer, or anything that reads like one (a worker follows its
    experiment arm's artifact, or one fixed artifact, through this)."""

    def read(self, model: str) -> PointerState: ...

    def watch(self, model: str, state: PointerState, timeout_s: float) -> PointerState: ...

    def history(self, model: str) -> list[dict[str, Any]]: ...


class PointerInvalid(CaravanError):
    """A pointer document that does not name an artifact (the wrong shape, or fields of the wrong type)."""


def target_of(document: Any) -> tuple[str, str]:
    """The (artifact id, artifact URI) a pointer document names; PointerInvalid when it names none."""
    if not isinstance(document, dict):
        raise PointerInvalid(f"the pointer is a JSON {type(document).__name__}, not an object")
    artifact_id, uri = document.get("artifact_id"), document.get("artifact_uri")
    if not isinstance(artifact_id, str) or not artifact_id or not isinstance(uri, str) or not uri:
        raise PointerInvalid("the pointer has no artifact_id and artifact_uri strings "
                             f"(keys: {sorted(str(k) for k in document)[:10]})")
    return artifact_id, uri


class Watcher(threading.Thread):
    """Follows the pointer of one model and swaps in each new version that survives the probe and loads."""

    def __init__(self, pointer: PointerSource, model: str, holder: ModelHolder, metrics: Metrics, *,
                 probe: Probe | None = None, wait_s: float = 30.0, min_backoff_s: float = 0.5,
                 max_backoff_s: float = 30.0, fallback_tries: int = 20) -> None:
        super().__init__(name=f"watch-{model}", daemon=True)
        self.pointer, self.model, self.holder, self.metrics, self.probe = pointer, model, holder, metrics, probe
        self.wait_s, self.min_backoff_s, self.max_backoff_s = wait_s, min_backoff_s, max_backoff_s
        self.fallback_tries = fallback_tries
        self.state = PointerState(None, -1, 0)  # -1: nothing seen yet, so the first read counts as a change
        self.stopped = threading.Event()
        self.last_error: str | None = None  # the last attempt's error; None once an attempt succeeds
        self.last_error_at: float | None = None
        self.errors = 0
        self.target: tuple[str, str] | None = None  # (artifact id, URI) the pointer names
        self.not_served: str | None = None  # why the pointer's model is not the one served
        self._refused: collections.OrderedDict[tuple[str, str], str] = collections.OrderedDict()
        self._trusted: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self._fell_back_for: tuple[str, str] | None = None

    # -- the loop ------------------------------------------------------------------------------------------

    def run(self) -> None:
        backoff = self.min_backoff_s
        if self.probe is not None:
            try:
                self.probe.start()  # warm before the first model arrives
            except Exception as exc:  # the first check starts it again, and reports why if it cannot
                log.warning("probe process did not start: %s", exc)
        while not self.stopped.is_set():
            try:
                self.step()
            except Exception as exc:  # whatever happened, the thread lives on: report, back off, retry
                self._failed(exc, backoff)
                self.stopped.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            else:
                self.last_error = None
                backoff = self.min_backoff_s
            self.metrics.degraded.set(0 if self.status()[0] in ("ok", "loading") else 1)

    def step(self) -> None:
        """One read (or watch) of the pointer, applied. Raises on any error; ``self.state`` then stays as it
        was, so the next step reads the pointer again and retries."""
        if self.state.version < 0:
            state = self.pointer.read(self.model)
        else:
            state = self.pointer.watch(self.model, self.state, self.wait_s)
            if state.version == self.state.version:
                return
        self.apply(state)
        self.state = state

    def stop(self) -> None:
        self.stopped.set()

    def _failed(self, exc: Exception, backoff: float) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {str(exc)[:500]}"
        self.last_error_at = time.time()
        self.metrics.pointer_errors.labels(type(exc).__name__).inc()
        expected = isinstance(exc, (CaravanError, ValueError))  # a backend away, a garbled document
        log.warning("model %s: reading or applying the pointer failed, retrying in %.1f s: %s", self.model,
                    backoff, self.last_error, exc_info=not expected)

    # -- applying a pointer ----------------------------------------------------------------------------------

    def apply(self, state: PointerState) -> None:
        """Serve what ``state`` names, if it is not served already and was not refused before."""
        document = state.document
        if document is None:
            self.target = None
            if self.holder.current is None:
                self.not_served = f"model {self.model!r} has no pointer yet"
            return
        key = target_of(document)
        self.target = key
        current = self.holder.current
        if current is not None and (current.artifact_id, current.artifact_uri) == key:
            self.not_served = None
            return
        reason = self._refused.get(key)
        if reason is None:
            try:
                model = self._load(key)
            except ModelUnsound as exc:
                reason = self._refuse(key, exc)
            else:
                self._serve(model)
                self.not_served = None
                return
        if self.holder.current is None:
            if self._fell_back_for != key:
                self._fall_back(key, reason)
        else:
            self.not_served = f"the pointer names {key[0]}, which was refused ({reason}); " \
                              f"still serving {self.holder.current.artifact_id}"

    def _load(self, key: tuple[str, str]) -> LoadedModel:
        """Read the model's files once; probe them unless this server has loaded them before; load them here."""
        artifact_id, uri = key
        files = read_model_files(artifact_at(uri, artifact_id))  # a store error propagates: retried
        if self.probe is not None and key not in self._trusted:
            self.probe.check_files(files)
        try:
            model, _ = build_model(files)
        except ModelUnsound:
            raise
        except Exception as exc:  # it passed the probe, yet does not load here: refuse it all the same
            raise ModelUnsound(f"{type(exc).__name__}: {exc}", artifact_id=artifact_id) from exc
        self._trusted[key] = None
        if len(self._trusted) > _REMEMBERED:
            self._trusted.popitem(last=False)
        return model

    def _serve(self, model: LoadedModel) -> None:
        previous = self.holder.current
        self.holder.swap(model)
        self.metrics.reloads.labels("success").inc()
        self.metrics.served(model, previous)
        log.info("now serving %s", model.artifact_id, extra={"model": model.artifact_id})

    def _refuse(self, key: tuple[str, str], exc: ModelUnsound) -> str:
        """Count and remember a refused model (it is not tried again until the pointer names it anew)."""
        self._refused[key] = exc.reason
        if len(self._refused) > _REMEMBERED:
            self._refused.popitem(last=False)
        self.holder.failed(key[0], exc)
        self.metrics.reloads.labels("crashed" if exc.crashed else "failure").inc()
        current = self.holder.current
        log.error("model %s refused%s; still serving %s: %s", key[0], " (it killed the probe process)"
                  if exc.crashed else "", current.artifact_id if current else "nothing", exc.reason)
        return exc.reason

    def _fall_back(self, refused: tuple[str, str], reason: str) -> None:
        """Nothing served and the pointer's model refused: serve the newest model of the history that loads."""
        history = self.pointer.history(self.model)  # an error propagates: the whole fallback is retried
        # The models that led to the current one, as the registry replays them: promotions and rollbacks,
        # without the rolled-back ones (undone on purpose) or rejected candidates (never current).
        stack, _ = lineage([entry for entry in history if isinstance(entry, dict)])
        tried = 0
        for entry in reversed(stack):
            try:
                key = target_of(entry)
            except PointerInvalid:
                continue
            if key == refused or key in self._refused:
                continue
            tried += 1
            if tried > self.fallback_tries:
                break
            try:
                model = self._load(key)
            except ModelUnsound as exc:
                self._refuse(key, exc)
                continue
            self._serve(model)
            self.not_served = (f"the pointer names {refused[0]}, which was refused ({reason}); serving "
                               f"{key[0]} from the history (promoted {entry.get('promoted_at')})")
            self._fell_back_for = refused
            log.warning("model %s: %s", self.model, self.not_served)
            return
        self.not_served = (f"the pointer names {refused[0]}, which was refused ({reason}); "
                           "no earlier model in the history loads")
        self._fell_back_for = refused

    # -- what /health says ---------------------------------------------------------------------------------

    def status(self) -> tuple[str, str | None]:
        """``ok``, ``degraded`` (serving, but not the pointer's model, or the pointer cannot be read),
        ``loading`` (nothing served yet) or ``unavailable`` (nothing can be served), and why."""
        if self.holder.current is None:
            if self.not_served is not None:
                return "unavailable", self.not_served
            return "loading", self.last_error and f"reading the pointer failed: {self.last_error}"
        if self.not_served is not None:
            return "degraded", self.not_served
        if self.last_error is not None:
            return "degraded", f"reading the pointer failed (retrying): {self.last_error}"
        return "ok", None

    @property
    def backend_error(self) -> str | None:
        """The last error reaching the pointer backend (None once it answers again)."""
        return self.last_error

