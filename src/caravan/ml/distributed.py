"""LightGBM's data-parallel learner across N processes: the gang's meta, shard layout, rendezvous, watchdog.

A distributed training is a *gang* of N ranks, each one allocation (Nomad) or one process (local) running the
same step. LightGBM does the learning (``tree_learner="data"``, ``pre_partition=True``, ``machines``,
``num_machines``, ``local_listen_port``, ``time_out``); this module only brings the ranks together:

- **Meta.** Each rank is dispatched with the job contract plus ``caravan_rank``, ``caravan_num_machines`` and
  ``caravan_gang`` (JSON: the gang id, the rendezvous deadline, LightGBM's socket ``time_out``). Nomad cannot set
  a group's ``count`` from dispatch meta (a dispatched child copies the parent's groups as registered), so a gang
  is N dispatches of a one-allocation job, not one job with ``count = N``.
- **Port.** Each rank listens on the port Nomad gave its allocation (``network { port "lightgbm" {} }``):
  ``NOMAD_PORT_lightgbm`` to listen on, ``NOMAD_IP_lightgbm``/``NOMAD_HOST_PORT_lightgbm`` for its peers. The
  local executor hands out free loopback ports under the same names.
- **Rendezvous** through the artifact store every step already writes to: each rank, once its shard is loaded,
  writes ``<artifact>/_gangs/<gang>/rank-<r>.json`` (host, port) and waits, until a deadline, for all N. A rank
  missing at the deadline fails every waiting rank with :class:`RendezvousTimeout`, which names it. The same
  folder carries ``abort.json``: the first rank (or the executor) that sees a failure writes it, and every
  rank's :class:`Watchdog` ends its process on sight, because LightGBM's socket learner waits (connect retries,
  then ``time_out`` minutes) for a peer that is gone.
- **Shards.** Rank ``r`` of ``N`` trains on rows ``[r*R/N, (r+1)*R/N)`` of the train split, reading only the
  Parquet row groups that overlap them (:func:`shard_layout`); the validation split is read whole by every rank
  so that every rank computes the same metric and early stopping stops all of them at the same round.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactNotFoundError, CaravanError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..artifacts import Artifact
    from ..storage.base import Store

log = logging.getLogger("caravan.ml.distributed")

#: Meta keys a rank receives beyond the job contract.
GANG_META = ("caravan_rank", "caravan_num_machines", "caravan_gang")
#: The network port label of the distributed spec (``network { port "lightgbm" {} }``).
PORT_LABEL = "lightgbm"
GANGS_DIR = "_gangs"
#: Exit code of a rank stopped by its watchdog because the gang was aborted.
EXIT_ABORTED = 3
#: LightGBM network parameters that name this run's addresses: left out of the saved model, so a model's bytes
#: do not depend on which ports the run happened to get.
NETWORK_LINES = ("[machines: ", "[local_listen_port: ")


class RendezvousTimeout(CaravanError):
    """Some ranks did not register before the rendezvous deadline; the message names them."""


class GangAborted(CaravanError):
    """Another rank (or the executor) aborted the gang; the message says who and why."""


@dataclass(frozen=True)
class Gang:
    """This rank's place in its gang, as its meta says."""

    id: str
    rank: int
    size: int
    rendezvous_timeout_s: float = 120.0
    socket_timeout_min: int = 10

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Gang:
        """The gang from ``NOMAD_META_caravan_rank``/``_num_machines``/``_gang``; a clear error if absent."""
        values = {}
        for key in GANG_META:
            value = env.get(f"NOMAD_META_{key}", env.get(f"NOMAD_META_{key.upper()}"))
            if value is None:
                raise CaravanError(f"NOMAD_META_{key} is not set: a distributed training runs as one rank of a gang")
            values[key] = value
        try:
            info = json.loads(values["caravan_gang"])
            gang = cls(id=str(info["id"]), rank=int(values["caravan_rank"]), size=int(values["caravan_num_machines"]),
                       rendezvous_timeout_s=float(info.get("rendezvous_timeout_s", 120.0)),
                       socket_timeout_min=int(info.get("socket_timeout_min", 10)))
        except (ValueError, KeyError, TypeError) as exc:
            raise CaravanError(f"bad gang meta {values}: {exc}") from exc
        if not 0 <= gang.rank < gang.size:
            raise CaravanError(f"rank {gang.rank} is outside a gang of {gang.size}")
        return gang


def gang_meta(meta: Mapping[str, str], *, gang_id: str, rank: int, size: int, rendezvous_timeout_s: float,
              socket_timeout_min: int = 10) -> dict[str, str]:
    """One rank's dispatch meta: the step's meta plus its place in the gang."""
    info = {"id": gang_id, "rendezvous_timeout_s": rendezvous_timeout_s, "socket_timeout_min": socket_timeout_min}
    return {**meta, "caravan_rank": str(rank), "caravan_num_machines": str(size),
            "caravan_gang": json.dumps(info, sort_keys=True)}


@dataclass(frozen=True)
class Endpoint:
    """Where this rank listens, and the address its peers reach it at."""

    listen_port: int
    host: str
    port: int

    @classmethod
    def from_env(cls, env: Mapping[str, str], label: str = PORT_LABEL) -> Endpoint:
        """From Nomad's port variables (``client/taskenv/env.go``): ``NOMAD_PORT_<label>`` is the port inside the
        task, ``NOMAD_IP_<label>``/``NOMAD_HOST_PORT_<label>`` what other allocations connect to."""
        port = env.get(f"NOMAD_PORT_{label}")
        if not port:
            raise CaravanError(f"NOMAD_PORT_{label} is not set: the job's group needs "
                               f"network {{ port \"{label}\" {{}} }}")
        host = env.get(f"NOMAD_IP_{label}") or env.get(f"NOMAD_HOST_IP_{label}") or "127.0.0.1"
        return cls(listen_port=int(port), host=host, port=int(env.get(f"NOMAD_HOST_PORT_{label}") or port))


# -- shards --------------------------------------------------------------------------------------------------

def shard_rows(total: int, rank: int, size: int) -> tuple[int, int]:
    """Rank ``rank``'s rows ``[start, stop)`` of ``total``: contiguous, sizes differing by at most one."""
    return total * rank // size, total * (rank + 1) // size


def shard_layout(group_rows: Sequence[int], size: int) -> list[dict[str, Any]]:
    """For each rank: its rows and the row groups (of a file with ``group_rows`` rows per group) it reads."""
    total = sum(group_rows)
    starts = [sum(group_rows[:i]) for i in range(len(group_rows))]
    layout = []
    for rank in range(size):
        start, stop = shard_rows(total, rank, size)
        groups = [i for i, (first, rows) in enumerate(zip(starts, group_rows, strict=True))
                  if start < stop and first < stop and first + rows > start]
        layout.append({"rank": rank, "rows": [start, stop], "row_groups": groups})
    return layout


def read_rows(source: pq.ParquetFile, start: int, stop: int, columns: Sequence[str] | None = None) -> pa.Table:
    """Rows ``[start, stop)`` of a Parquet file, reading only the row groups that hold them."""
    import pyarrow as pa

    meta = source.metadata
    parts, first = [], 0
    for index in range(meta.num_row_groups):
        rows = meta.row_group(index).num_rows
        if first < stop and first + rows > start:
            table = source.read_row_group(index, columns=list(columns) if columns is not None else None)
            parts.append(table.slice(max(0, start - first), min(stop, first + rows) - max(start, first)))
        first += rows
    if not parts:
        schema = source.schema_arrow
        if columns is not None:
            schema = pa.schema([schema.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(parts)


def open_parquet(artifact: Artifact, name: str) -> pq.ParquetFile:
    """A published Parquet file opened for reading row groups.

    On the local store it is read in place, its size checked against the manifest (hashing it would read the
    whole file, which a shard must not). From any other store, :meth:`~caravan.artifacts.Artifact.local_file`
    streams it into a temporary file checked against its size and sha256: a rank then decodes only its row
    groups and holds neither the file's bytes nor the split in memory.
    """
    import pyarrow.parquet as pq

    from ..errors import ArtifactCorruptError
    from ..storage.local import LocalStore

    store = artifact.store
    if isinstance(store, LocalStore):
        path = store.path(store.key_of(artifact.file_uri(name)))
        if path.stat().st_size != artifact.manifest()["files"][name]["size"]:
            raise ArtifactCorruptError(f"file {name!r} does not match its manifest (size)", artifact=artifact.id,
                                       store=store.root_uri)
        return pq.ParquetFile(path)
    with artifact.local_file(name) as path:
        return pq.ParquetFile(path)  # the open file outlives its name, removed on leaving


def load_shard(dataset: Artifact, text: Artifact | None, split: str, start: int, stop: int) -> pa.Table:
    """Rows ``[start, stop)`` of a split with its shared text features, as :func:`caravan.ml.features.load_split`
    gives the whole split (a text feature the split already has is kept, in the text step's type)."""
    table = read_rows(open_parquet(dataset, f"{split}.parquet"), start, stop)
    if text is not None:  # row-aligned with the split: the same rows of its own file
        from .features import with_text_features

        extra = read_rows(open_parquet(text, f"text_{split}.parquet"), start, stop)
        table = with_text_features(table, extra, f"text features of {split} rows [{start}, {stop})")
    return table


def group_rows_of(source: pq.ParquetFile) -> list[int]:
    """Rows per row group of a Parquet file (from its footer)."""
    meta = source.metadata
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def without_network(model_text: str) -> str:
    """A LightGBM model text without the parameter lines that name this run's addresses (:data:`NETWORK_LINES`)."""
    return "".join(line for line in model_text.splitlines(keepends=True) if not line.startswith(NETWORK_LINES))


def lightgbm_network(gang: Gang, endpoint: Endpoint, machines: Sequence[str]) -> dict[str, Any]:
    """LightGBM's parameters for data-parallel training over ``machines`` (``host:port``, in rank order)."""
    return {"tree_learner": "data", "num_machines": gang.size, "machines": ",".join(machines),
            "local_listen_port": endpoint.listen_port, "time_out": gang.socket_timeout_min, "pre_partition": True}


# -- rendezvous ----------------------------------------------------------------------------------------------

class Rendezvous:
    """A gang's meeting point in the artifact store: one file per registered rank, and the abort mark."""

    def __init__(self, store: Store, artifact_key: str, gang_id: str) -> None:
        self.store = store
        self.prefix = f"{artifact_key}/{GANGS_DIR}/{gang_id}/"

    def announce(self, rank: int, host: str, port: int, **extra: Any) -> None:
        """Register ``rank`` at ``host:port``."""
        body = {"rank": rank, "host": host, "port": port, **extra}
        self.store.write(f"{self.prefix}rank-{rank}.json", json.dumps(body, sort_keys=True).encode())

    def registered(self) -> dict[int, dict[str, Any]]:
        """The ranks registered so far, by rank."""
        found = {}
        for key in self.store.list_keys(self.prefix):
            name = key.rsplit("/", 1)[-1]
            if name.startswith("rank-") and name.endswith(".json"):
                try:
                    entry = json.loads(self.store.read(key))
                except (ArtifactNotFoundError, ValueError):
                    continue  # cleared meanwhile, or half-visible on a store without atomic writes
                found[int(entry["rank"])] = entry
        return found

    def machines(self, size: int, timeout_s: float, *, poll_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> list[str]:
        """``host:port`` of every rank in rank order, once all ``size`` registered; :class:`RendezvousTimeout`
        naming the missing ranks after ``timeout_s``, :class:`GangAborted` as soon as the gang is aborted."""
        deadline = clock() + timeout_s
        pause = poll_s
        while True:
            aborted = self.aborted()
            if aborted is not None:
                raise GangAborted(f"the gang was aborted by {aborted.get('by')}: {aborted.get('reason')}")
            found = self.registered()
            missing = [rank for rank in range(size) if rank not in found]
            if not missing:
                return [f"{found[rank]['host']}:{found[rank]['port']}" for rank in range(size)]
            if clock() >= deadline:
                names = ", ".join(f"rank {rank}" for rank in missing)
                raise RendezvousTimeout(f"{names} of {size} did not register within the rendezvous deadline of "
                                        f"{timeout_s:g} s (missing: {names}; registered: "
                                        f"{sorted(found) or 'none'})")
            time.sleep(min(pause, max(0.0, deadline - clock())))  # a store has no "wait for key"; poll, gently
            pause = min(pause * 1.5, 1.0)

    def abort(self, by: str, reason: str) -> None:
        """Mark the gang aborted (the first reason stays)."""
        body = json.dumps({"by": by, "reason": reason, "at": time.time()}, sort_keys=True).encode()
        try:
            self.store.create(f"{self.prefix}abort.json", body)
        except CaravanError as exc:  # never hide the failure that led here behind a store error
            log.error("could not mark gang %s aborted (%s): %s", self.prefix, reason, exc)

    def aborted(self) -> dict[str, Any] | None:
        """The abort mark, or None."""
        try:
            return dict(json.loads(self.store.read(f"{self.prefix}abort.json")))
        except (ArtifactNotFoundError, ValueError):
            return None

    def clear(self) -> None:
        """Remove the gang's folder (registrations and abort mark)."""
        self.store.delete_prefix(self.prefix)


class Watchdog:
    """Ends this process when its gang is aborted: a LightGBM rank whose peer died can otherwise wait for
    minutes (connect retries, socket ``time_out``) inside native code that no exception reaches."""

    def __init__(self, rendezvous: Rendezvous, rank: int, *, poll_s: float = 0.25,
                 exit: Callable[[int], None] = os._exit) -> None:
        self.rendezvous, self.rank, self.poll_s, self._exit = rendezvous, rank, poll_s, exit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="caravan-gang-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                aborted = self.rendezvous.aborted()
            except Exception as exc:  # a store hiccup is no reason to stop a training that runs fine
                log.warning("gang watchdog could not read the abort mark: %s", exc)
                continue
            if aborted is not None and not self._stop.is_set():
                print(f"caravan gang: rank {self.rank} stops: the gang was aborted by {aborted.get('by')}: "
                      f"{aborted.get('reason')}", file=sys.stderr, flush=True)
                self._exit(EXIT_ABORTED)
                return
