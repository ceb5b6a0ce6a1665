"""The Consul double's service catalog: what Nomad's service registration leaves there, and the health query
consul-template's ``service`` function asks (``GET /v1/health/service/:service``, C5).

Read in ``agent/health_endpoint.go`` and ``agent/consul/health_endpoint.go`` (``ServiceNodes``: one entry per
instance, ``{"Node", "Service", "Checks"}``; ``?passing`` keeps instances whose checks all pass; a blocking
query on the services table's index) and ``agent/consul/acl.go`` (``filterCheckServiceNodes``: an instance is
shown only when the token reads both its node and its service; anything dropped sets
``X-Consul-Results-Filtered-By-ACLs``). A token without those rules gets ``200 []``, never a 403: to a
template that is "no healthy instance", which is how a missing task role shows up in production.

``GET /v1/catalog/service/:service`` (``agent/catalog_endpoint.go``, ``CatalogServiceNodes``) lists the same
instances flat, one ``ServiceNode`` each (``Node``, ``Address`` and the ``Service*`` fields), without health:
no ``passing``; ``tag`` filters alike, ACLs filter alike (``filterServiceNodes``), blocking on the same index.

Registration is a test control (:meth:`CatalogMixin.register_service`), not the agent API: Nomad does it with
each service's own identity, which the double does not model.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ._http import go_json
from .consul_acl import Authorizer


@dataclass
class Instance:
    """One registered service instance and its health."""

    id: str
    name: str
    node: str
    address: str
    port: int
    tags: tuple[str, ...]
    passing: bool
    index: int


class CatalogMixin:
    """Service instances and ``/v1/health/service/:service`` (a mixin of the Consul double)."""

    _cond: threading.Condition
    _services: dict[str, Instance]
    _services_index: int
    _next_index: Callable[[], int]
    _authz: Callable[[Any], Authorizer]

    def register_service(self, name: str, address: str, port: int, *, node: str = "", tags: Iterable[str] = (),
                         passing: bool = True) -> str:
        """Add an instance of ``name`` (on the agent's own node unless ``node``); return its service ID."""
        from .consul import NODE_NAME

        with self._cond:
            index = self._next_index()
            service_id = f"_nomad-task-{uuid.uuid4()}-{name}"
            self._services[service_id] = Instance(service_id, name, node or NODE_NAME, address, port, tuple(tags),
                                                  passing, index)
            self._services_index = index
            self._cond.notify_all()
        return service_id

    def set_service_passing(self, service_id: str, passing: bool) -> None:
        """Turn an instance's service check passing or critical (a health check that starts or stops failing).

        In Consul a check update is written by ``ensureCheckTxn`` (``agent/consul/state/catalog.go``), which
        advances the checks table's index that ``/v1/health/service`` blocks on: a blocking query returns."""
        with self._cond:
            instance = self._services[service_id]
            if instance.passing != passing:
                instance.passing = passing
                self._services_index = self._next_index()
                self._cond.notify_all()

    def deregister_service(self, service_id: str) -> None:
        """Remove an instance (what Nomad does when its allocation stops)."""
        with self._cond:
            if self._services.pop(service_id, None) is not None:
                self._services_index = self._next_index()
                self._cond.notify_all()

    def _shown(self, q: Any, name: str, *, passing_only: bool) -> tuple[list[Instance], dict[str, str]]:
        """The instances of ``name`` a query asks for and its token may read, and the ACL-filtered header."""
        authz = self._authz(q)
        found = [s for s in sorted(self._services.values(), key=lambda s: s.index) if s.name == name]
        if passing_only:
            found = [s for s in found if s.passing]
        for tag in q.params.get("tag", []):
            found = [s for s in found if tag in s.tags]
        shown = [s for s in found if authz.allowed("node", s.node, "read") and authz.allowed("service", s.name, "read")]
        return shown, {"X-Consul-Results-Filtered-By-ACLs": "true"} if len(shown) < len(found) else {}

    def _catalog_service(self, q: Any, name: str) -> tuple[int, bytes, dict[str, str]]:
        """One evaluation of ``/v1/catalog/service/:service``: (index, JSON body, extra headers)."""
        from .consul import DATACENTER

        shown, headers = self._shown(q, name, passing_only=False)
        body = [{
            "ID": str(uuid.uuid5(uuid.NAMESPACE_DNS, s.node)), "Node": s.node, "Address": "127.0.0.1",
            "Datacenter": DATACENTER, "TaggedAddresses": None, "NodeMeta": None, "ServiceKind": "",
            "ServiceID": s.id, "ServiceName": s.name, "ServiceTags": list(s.tags), "ServiceAddress": s.address,
            "ServiceWeights": {"Passing": 1, "Warning": 1}, "ServiceMeta": None, "ServicePort": s.port,
            "ServiceEnableTagOverride": False, "CreateIndex": s.index, "ModifyIndex": s.index,
        } for s in shown]
        return max(self._services_index, 1), go_json(body, q.has("pretty")), headers

    def _health_service(self, q: Any, name: str) -> tuple[int, bytes, dict[str, str]]:
        """One evaluation of the health query: (index, JSON body, extra headers)."""
        from .consul import DATACENTER

        shown, headers = self._shown(q, name, passing_only=q.has("passing"))
        body = [{
            "Node": {"ID": str(uuid.uuid5(uuid.NAMESPACE_DNS, s.node)), "Node": s.node, "Address": "127.0.0.1",
                     "Datacenter": DATACENTER, "TaggedAddresses": None, "Meta": None,
                     "CreateIndex": 1, "ModifyIndex": 1},
            "Service": {"ID": s.id, "Service": s.name, "Tags": list(s.tags), "Address": s.address,
                        "Meta": None, "Port": s.port, "Weights": {"Passing": 1, "Warning": 1},
                        "EnableTagOverride": False, "CreateIndex": s.index, "ModifyIndex": s.index},
            "Checks": [
                {"Node": s.node, "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing",
                 "ServiceID": "", "ServiceName": ""},
                {"Node": s.node, "CheckID": f"service:{s.id}", "Name": f"service: \"{s.name}\" check",
                 "Status": "passing" if s.passing else "critical", "ServiceID": s.id, "ServiceName": s.name},
            ],
        } for s in shown]
        return max(self._services_index, 1), go_json(body, q.has("pretty")), headers
