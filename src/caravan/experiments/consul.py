"""The Consul experiment store: ``caravan/<env>/experiments/M`` by check-and-set on its ModifyIndex.

The client, its timeouts and the error classification are :class:`caravan.consul_api.ConsulAPI`'s, as the
model pointer's are: 429, 5xx and no answer are ``BackendUnavailable``, other 4xx ``BackendRejected``.
Watching is a blocking query on the key: for a single key Consul answers with the key's own ModifyIndex as
``X-Consul-Index`` (``agent/consul/kvs_endpoint.go``, Get), so blocking on the version we hold returns as
soon as someone writes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from ..consul_api import ConsulAPI
from .document import (
    Counts,
    Experiment,
    ExperimentConflict,
    ExperimentInvalid,
    ExperimentStore,
    check_name,
    encode_stats,
    experiment_key,
    merge_counts,
    parse_stats,
    stats_prefix,
)

log = logging.getLogger(__name__)


class ConsulExperimentStore(ConsulAPI, ExperimentStore):
    """Experiment documents and per-gateway counters in Consul KV."""

    name = "consul"

    def _parse(self, model: str, data: Any) -> tuple[Experiment | None, int]:
        if data is None:
            return None, 0
        key = experiment_key(model, self.environment)
        try:
            return Experiment.from_json(data.get("Value") or b""), int(data["ModifyIndex"])
        except ExperimentInvalid as exc:
            raise ExperimentInvalid(f"{key} in consul {self.address}: {exc}") from None

    def read(self, model: str) -> tuple[Experiment | None, int]:
        key = experiment_key(model, self.environment)
        _, data = self.call(f"GET {key}", self.client.kv.get, key)
        return self._parse(model, data)

    def write(self, exp: Experiment, version: int) -> int:
        key = experiment_key(exp.model, self.environment)
        if not self.call(f"PUT {key}?cas={version}", self.client.kv.put, key, exp.to_json().encode(), cas=version):
            raise ExperimentConflict(f"model {exp.model!r}: the experiment document {key} changed since version "
                                     f"{version}; read it again")
        # The PUT answers only true: read the new ModifyIndex (a later writer's is newer anyway).
        _, data = self.call(f"GET {key}", self.client.kv.get, key)
        return max(int(data["ModifyIndex"]) if data else 0, version + 1)

    def watch(self, model: str, version: int, wait_s: float) -> tuple[Experiment | None, int]:
        key = experiment_key(model, self.environment)
        deadline = time.monotonic() + wait_s
        index = max(1, version)  # Consul's rule: never block on an index below 1
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self.read(model)
            wait = max(1, int(min(self.wait_s, remaining)))
            new_index, data = self.call(f"GET {key}?index={index}", self.client.kv.get, key, index=index,
                                         wait=f"{wait}s")
            seen = int(data["ModifyIndex"]) if data else 0
            if seen != version:
                return self._parse(model, data)
            # A lower index means the store was reset or restored: start over.
            index = 1 if int(new_index or 0) < index else max(1, int(new_index or 0))

    def put_stats(self, model: str, gateway_id: str, counts: Mapping[str, tuple[int, int]], *,
                  salt: str = "") -> None:
        key = stats_prefix(model, self.environment) + check_name("gateway id", gateway_id)
        self.call(f"PUT {key}", self.client.kv.put, key, encode_stats(counts, salt, key))

    def read_stats(self, model: str, *, salt: str | None = None) -> Counts:
        prefix = stats_prefix(model, self.environment)
        _, entries = self.call(f"GET {prefix}?recurse", self.client.kv.get, prefix, recurse=True)
        parts = []
        for item in sorted(entries or [], key=lambda e: e["Key"]):
            try:
                their_salt, counts = parse_stats(item.get("Value"), f"{item['Key']} in consul {self.address}")
            except ExperimentInvalid as exc:  # one broken gateway key must not blind every gateway
                log.warning("experiment stats skipped: %s", exc)
                continue
            if salt is None or their_salt == salt:
                parts.append(counts)
        return merge_counts(parts)

    def clear_stats(self, model: str) -> None:
        prefix = stats_prefix(model, self.environment)
        self.call(f"DELETE {prefix}?recurse", self.client.kv.delete, prefix, recurse=True)
