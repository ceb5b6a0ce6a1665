"""Consul's HTTP API for caravan: the ``[consul]`` settings, one client construction, one error translation.

Address from ``CONSUL_HTTP_ADDR`` (wins) or ``[consul] address``; the token from caravan's secret
``consul/token`` (``CONSUL_HTTP_TOKEN`` locally), which py-consul also reads itself.

Every request has a read timeout (``[consul] timeout_s``; py-consul >= 1.8 adds a blocking query's
wait and its jitter on top), so a half-open connection fails the call instead of hanging a watch.
Errors are classified by HTTP status: 429, 5xx and no answer are :class:`BackendUnavailable`
(retryable), other 4xx :class:`BackendRejected`. Users: the model pointer (registry/consul.py), the
experiment store (experiments/consul.py) and the gateway's worker discovery (gateway/workers.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import luigi

from .config import check_environment, section, setting
from .config import environment as config_environment
from .errors import BackendRejected, BackendUnavailable, ConfigurationError


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


def client(address: str, token: str | None = None, timeout_s: float | None = None) -> Any:
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


def one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ConsulAPI:
    """One Consul agent as caravan reaches it: ``address``, ``environment``, the py-consul ``client`` and
    :meth:`call`, which translates the client's errors once."""

    def __init__(self, address: str | None = None, token: str | None = None, timeout_s: float | None = None,
                 environment: str | None = None) -> None:
        """``timeout_s``: the read timeout of each request (default ``[consul] timeout_s``); ``environment``: whose
        keys, under ``caravan/<env>/`` (default: the one in effect, :func:`caravan.config.environment`)."""
        self.environment = check_environment(environment) if environment else config_environment()
        self.address = address or setting("CONSUL_HTTP_ADDR", section(consul).address)
        if token is None:
            from .secrets import get_secret

            token = get_secret("consul", "token")
        self.client = client(self.address, token, timeout_s)
        self.wait_s = int(section(consul).watch_wait_s)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, a py-consul call, with its errors as caravan's (``what`` names it in them)."""
        import consul as py_consul
        import requests

        backend = f"consul {self.address}"
        try:
            return fn(*args, **kwargs)
        except (requests.RequestException, py_consul.Timeout) as exc:
            raise BackendUnavailable(f"{what}: no answer ({type(exc).__name__}: {one_line(str(exc))})",
                                     backend=backend) from exc
        except py_consul.ConsulException as exc:
            status = status_of(exc)
            text = one_line(str(exc))
            if status is None:  # an answer, but not Consul's (a proxy's page, a cut body): retry later
                raise BackendUnavailable(f"{what}: the answer is not Consul's ({text})", backend=backend) from exc
            if status == 429 or status >= 500:
                raise BackendUnavailable(f"{what}: HTTP {status} ({text})", backend=backend) from exc
            if status in (401, 403):
                raise BackendRejected(f"{what}: permission denied, HTTP {status} ({text})", backend=backend) from exc
            raise BackendRejected(f"{what}: HTTP {status} ({text})", backend=backend) from exc
