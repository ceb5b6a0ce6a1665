"""Nomad's HTTP API, owned here: client settings, error translation, retries, blocking queries, logs.

Everything that talks to Nomad (the executor, ``caravan publish``, ``caravan trigger``, the benches) goes
through :class:`NomadAPI`. Requests travel through python-nomad's ``Requester`` (token header, region, TLS),
and every answer is judged once, here:

- :class:`NomadUnavailable` (a :class:`~caravan.errors.BackendUnavailable`): no answer (refused, reset,
  read timeout), 429, 502-504, and a 500 whose text is a leader or forwarding error (``No cluster
  leader``, ``rpc error: ...``, ``No path to region``, ``EOF``...). Nothing was decided about the request:
  retry it (:meth:`NomadAPI.retry`).
- :class:`NomadRejected` (a :class:`~caravan.errors.BackendRejected`): any other answer that is not 2xx.
  Nomad answers 500 for most refusals (bad dispatch meta, unknown parameterized job, ``EnforceIndex``
  conflicts), so a 500 is transient only when its text says so. The error names the method and URL and
  carries ``.status`` and ``.text``.

Blocking queries (N3): ``?index=<X-Nomad-Index>&wait=<n>s``; the server adds up to ``wait/16`` of jitter, so
the client's read timeout is above ``wait * 17/16``; an index that goes backwards resets to 0.
"""

from __future__ import annotations

import importlib
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import luigi

from .config import section, setting
from .errors import BackendRejected, BackendUnavailable, ConfigurationError

log = logging.getLogger("caravan.nomad")
_T = TypeVar("_T")


class nomad(luigi.Config):  # noqa: N801 - the class name is the luigi.cfg section name
    """``[nomad]``: how to reach the cluster and how long to wait on it. ``NOMAD_ADDR``, ``NOMAD_TOKEN``,
    ``NOMAD_NAMESPACE``, ``NOMAD_REGION``, ``NOMAD_CACERT``, ``NOMAD_CLIENT_CERT``, ``NOMAD_CLIENT_KEY`` win."""

    address = luigi.Parameter(default="http://127.0.0.1:4646", description="Nomad HTTP API address.")
    namespace = luigi.Parameter(default="", description="Namespace of the step jobs (default: Nomad's 'default').")
    region = luigi.Parameter(default="", description="Region (default: the agent's).")
    cacert = luigi.Parameter(default="", description="CA bundle to verify Nomad's TLS certificate.")
    client_cert = luigi.Parameter(default="", description="Client certificate for mutual TLS.")
    client_key = luigi.Parameter(default="", description="Client key for mutual TLS.")
    blocking_wait_s = luigi.IntParameter(default=60, description="Longest single blocking query (Nomad caps at 300).")
    request_timeout_s = luigi.FloatParameter(default=10.0, description="Timeout of non-blocking requests.")
    placement_timeout_s = luigi.FloatParameter(
        default=3600.0,
        description="How long a step may wait for capacity (every fitting node full) before its child job is "
        "stopped and the step fails. A task's placement_timeout_s parameter overrides it.")


# 500 texts that say nothing about the request: a leader election, a forwarding hop that failed, a
# server not yet caught up (nomad/structs/errors.go: errNoLeader, errNotReadyForConsistentReads,
# errNoRegionPath; forwarding errors from nomad/rpc.go come back as "rpc error: ..."; hashicorp/raft's
# ErrLeadershipLost / ErrNotLeader / ErrRaftShutdown / ErrEnqueueTimeout during an election).
TRANSIENT_500_TEXTS = (
    "no cluster leader",
    "not ready to serve consistent reads",
    "no path to region",
    "rpc error",
    "eof",
    "connection reset",
    "connection refused",
    "broken pipe",
    "i/o timeout",
    "leadership lost",
    "node is not the leader",
    "raft is already shutdown",
    "timed out enqueuing operation",
)
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
_TRANSIENT_500 = re.compile(r"\b(?:" + "|".join(re.escape(t) for t in TRANSIENT_500_TEXTS) + r")\b", re.IGNORECASE)


def is_transient(status: int | None, text: str) -> bool:
    """Whether an answer (``status`` None: no answer at all) means "try again", not "no"."""
    if status is None or status in TRANSIENT_STATUSES:
        return True
    return status == 500 and _TRANSIENT_500.search(text) is not None


class NomadUnavailable(BackendUnavailable):
    """Nomad gave no answer, or one that decides nothing (leader election, overload): retry."""

    def __init__(self, message: str, *, backend: str = "", status: int | None = None, text: str = "") -> None:
        self.status = status
        self.text = text
        super().__init__(message, backend=backend)


class NomadRejected(BackendRejected):
    """Nomad answered no (4xx, or a 500 that is not a leader/forwarding error): retrying will not help."""

    def __init__(self, message: str, *, backend: str = "", status: int, text: str = "") -> None:
        self.status = status
        self.text = text
        super().__init__(message, backend=backend)


def backoff_delay(attempt: int, *, base_s: float = 0.1, cap_s: float = 2.0, rand: Callable[[], float] = random.random
                  ) -> float:
    """The pause before retry number ``attempt`` (0-based): capped exponential, with "equal jitter" (half fixed,
    half random) so that many workers waiting out one election do not come back in step."""
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt, 60))
    return ceiling / 2 + rand() * ceiling / 2


@dataclass
class Outage:
    """One stretch of failed attempts at one call: logged when it starts and when it ends, not per request."""

    what: str
    started: float = 0.0
    failures: int = 0
    last: BaseException | None = None

    def failed(self, error: BaseException, until: float) -> None:
        if self.failures == 0:
            self.started = time.monotonic()
            log.warning("Nomad unavailable (%s): %s; retrying for up to %.0f s", self.what, error,
                        max(0.0, until - time.monotonic()))
        self.failures += 1
        self.last = error

    def recovered(self) -> None:
        if self.failures:
            log.warning("Nomad answered again (%s) after %.1f s and %d failed attempts", self.what,
                        time.monotonic() - self.started, self.failures)
        self.failures = 0


def retry(what: str, call: Callable[[], _T], *, deadline: float, sleep: Callable[[float], None] = time.sleep,
          base_s: float = 0.1, cap_s: float = 2.0) -> _T:
    """``call()`` until it does not raise :class:`~caravan.errors.BackendUnavailable`, or ``deadline``
    (``time.monotonic()``) passes; then the last such error is raised. Rejections and interrupts pass at once."""
    outage = Outage(what)
    while True:
        try:
            result = call()
        except BackendUnavailable as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise
            outage.failed(exc, deadline)
            sleep(min(remaining, backoff_delay(outage.failures - 1, base_s=base_s, cap_s=cap_s)))
            continue
        outage.recovered()
        return result


def check_address(address: str) -> None:
    """Refuse an address python-nomad would silently misread."""
    if not address.startswith(("http://", "https://")):
        raise ConfigurationError(f"Nomad address {address!r} must start with http:// or https://")


class NomadAPI:
    """One Nomad cluster's HTTP API, with answers translated into caravan's errors."""

    def __init__(self, address: str, *, token: str | None = None, namespace: str | None = None,
                 region: str | None = None, verify: str | bool = True, cert: tuple[str, str] | tuple[()] = (),
                 timeout_s: float = 10.0, wait_s: int = 60) -> None:
        check_address(address)
        # python-nomad's package is called `nomad`, like the project's folder of job specs; a regular
        # package wins over that namespace folder at run time, but type checkers resolve the folder.
        python_nomad: Any = importlib.import_module("nomad")
        import requests

        self.address = address.rstrip("/")
        self.namespace = namespace or None
        self.region = region or None
        self.timeout_s = float(timeout_s)
        self.wait_s = max(1, min(int(wait_s), 300))  # Nomad clamps longer waits to 300 s anyway
        self.backend = f"nomad {self.address}"
        self.session = requests.Session()
        self._settings = dict(address=self.address, token=token, namespace=self.namespace, region=self.region,
                              timeout=self.timeout_s, verify=verify, cert=cert, session=self.session)
        self._requester_class = importlib.import_module("nomad.api.base").Requester
        # The python-nomad client, on the same session and settings, for callers that want its helpers.
        self.client = python_nomad.Nomad(**self._settings)

    @classmethod
    def from_config(cls) -> NomadAPI:
        """The cluster of ``[nomad]`` in luigi.cfg, with the ``NOMAD_*`` environment variables winning."""
        from .secrets import get_secret

        cfg = section(nomad)
        cacert = setting("NOMAD_CACERT", cfg.cacert)
        cert, key = setting("NOMAD_CLIENT_CERT", cfg.client_cert), setting("NOMAD_CLIENT_KEY", cfg.client_key)
        return cls(setting("NOMAD_ADDR", cfg.address), token=get_secret("nomad", "token"),
                   namespace=setting("NOMAD_NAMESPACE", cfg.namespace) or None,
                   region=setting("NOMAD_REGION", cfg.region) or None,
                   # python-nomad does not verify TLS unless told to; caravan always does.
                   verify=cacert or True, cert=(cert, key) if cert and key else (),
                   timeout_s=float(cfg.request_timeout_s), wait_s=int(cfg.blocking_wait_s))

    # -- one request ---------------------------------------------------------------------------

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None,
                timeout: float | None = None) -> Any:
        """``METHOD /v1/<path>``; the ``requests.Response`` of a 2xx answer, else NomadUnavailable/NomadRejected.

        ``?namespace`` is sent on every request when one is configured (python-nomad adds it to some
        endpoints only, not to ``evaluation``)."""
        from nomad.api import exceptions as nx

        query = {k: v for k, v in (params or {}).items() if v is not None}
        if self.namespace:
            query.setdefault("namespace", self.namespace)
        requester = self._requester_class(**self._settings)
        # python-nomad builds "/v1/<ENDPOINT>/<args>": the whole path as the endpoint, unescaped, as it
        # sends job ids with "/" (Nomad routes both forms, N0).
        requester.ENDPOINT = path.strip("/")
        what = f"{method.upper()} {self.address}/v1/{path.strip('/')}"
        try:
            return requester.request(method=method.lower(), params=query, json=json,
                                     timeout=timeout if timeout is not None else self.timeout_s)
        except nx.BaseNomadException as exc:
            raise self._translate(what, getattr(exc, "nomad_resp", None), exc) from exc
        except Exception as exc:  # requests' own errors that python-nomad lets through (e.g. read timeouts)
            import requests

            if isinstance(exc, requests.RequestException):
                raise NomadUnavailable(f"{what}: no answer: {exc}", backend=self.backend) from exc
            raise

    def _translate(self, what: str, response: Any, exc: BaseException) -> Exception:
        status = getattr(response, "status_code", None)
        if status is None:  # python-nomad wraps connection errors: the request got no answer
            return NomadUnavailable(f"{what}: no answer: {response or exc}", backend=self.backend)
        text = _text(response).strip()
        short = text if len(text) <= 500 else text[:500] + "…"
        if is_transient(status, text):
            return NomadUnavailable(f"{what}: HTTP {status}: {short}", backend=self.backend, status=status,
                                    text=text)
        return NomadRejected(f"{what}: HTTP {status}: {short}", backend=self.backend, status=status, text=text)

    def get(self, path: str, params: Mapping[str, Any] | None = None, timeout: float | None = None) -> Any:
        """The JSON body of ``GET /v1/<path>``."""
        return self.request("get", path, params=params, timeout=timeout).json()

    def read(self, path: str, params: Mapping[str, Any] | None = None) -> Any | None:
        """The JSON body of ``GET /v1/<path>``, or None when Nomad answers 404."""
        try:
            return self.get(path, params)
        except NomadRejected as exc:
            if exc.status == 404:
                return None
            raise

    def post(self, path: str, json: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        """The JSON body of ``POST /v1/<path>``."""
        return self.request("post", path, params=params, json=json).json()

    def delete(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """The JSON body of ``DELETE /v1/<path>``."""
        return self.request("delete", path, params=params).json()

    def block(self, path: str, *, index: int, wait_s: float, params: Mapping[str, Any] | None = None
              ) -> tuple[Any, int]:
        """One blocking query: the body and the index to send next (reset to 0 if it went backwards).

        A return does not mean anything changed: Nomad answers the unchanged body when the wait ends."""
        wait = max(1, min(int(wait_s), self.wait_s))
        response = self.request("get", path, params={**(params or {}), "index": index, "wait": f"{wait}s"},
                                timeout=wait * 17 / 16 + 5)
        new_index = int(response.headers.get("X-Nomad-Index", "0") or 0)
        return response.json(), (0 if new_index < index else new_index)

    def logs(self, alloc_id: str, task: str, kind: str) -> str:
        """A task's whole ``stdout``/``stderr`` log as text. Nomad sends ``text/plain`` without a charset, which
        ``requests`` would decode as ISO-8859-1; steps write UTF-8, so decode that (invalid bytes replaced)."""
        response = self.request("get", f"client/fs/logs/{alloc_id}",
                                params={"task": task, "type": kind, "plain": "true", "origin": "start"})
        return bytes(response.content).decode("utf-8", errors="replace")

    def retry(self, what: str, call: Callable[[], _T], *, deadline: float) -> _T:
        """:func:`retry` with this module's backoff: transient errors are waited out until ``deadline``."""
        return retry(what, call, deadline=deadline)


def _text(response: Any) -> str:
    content = getattr(response, "content", None)
    if isinstance(content, bytes):
        return content.decode("utf-8", errors="replace")
    return str(getattr(response, "text", "") or "")
