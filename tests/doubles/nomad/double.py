"""An in-process Nomad agent (one server, one client node) that the real ``python-nomad`` drives unchanged.

It answers the part of the HTTP API that a client of parameterized batch jobs uses, as read in
``command/agent/*_endpoint.go``, ``nomad/job_endpoint.go`` and ``nomad/structs`` (see
``NOMAD_CONSUL_VAULT_API.md``), and it really runs every placed task's ``command``/``args`` as a
subprocess, whatever the driver, so that pipelines run end to end through HTTP:

* jobs: list (``prefix``, ``namespace``, ``meta``), register (``POST /v1/jobs``, ``/v1/job/:id``), read,
  ``/summary`` (``Children`` for parents), ``/allocations`` (``all``), ``/evaluations``, stop and purge
  (``DELETE``), ``/dispatch`` (N1's validation order and 500 texts, ``?idempotency_token=``),
  ``/periodic/force``; ``POST /v1/jobs/parse`` through the same HCL conversion as :meth:`load_hcl`.
* allocations, evaluations, ``/v1/client/fs/logs/:alloc`` (plain or framed, ``origin``,
  ``offset``, ``follow``), ``/v1/status/leader``, ``GET /v1/nodes`` (``?resources=true``; node:read, so under
  ACLs only the management token reads it).
* one Raft-like index for every write; ``X-Nomad-Index``/``KnownLeader``/``LastContact`` headers;
  blocking queries (``index``/``wait``, clamped to 300 s, ``wait/16`` jitter) on a condition variable.
* a client that honours restart and reschedule policies, writes ``alloc/logs/<task>.std{out,err}.0``,
  and kills with SIGTERM then SIGKILL after the kill timeout.
* job ids with ``/`` work raw and ``%2F``-escaped; errors are ``text/plain``; a wrong method is 405.
* ACLs (``acl``): a management token and tokens with policies; each endpoint checks the namespace capability
  Nomad checks, register checks every host volume's mount capability.

The client runs batch and sysbatch work only: service and system jobs stay unplaced (a blocked eval with
"missing drivers"), so a registered serving spec never starts a server. Faults (:meth:`NomadDouble.inject`)
stage what a real cluster does on a bad day.

A cluster, not a quiet single node (N11, each behaviour cited in its module): ``nodes`` with finite CPU,
memory and disk, datacenters, classes, attributes and meta; allocations use them while not terminal, a job that
does not fit gets ``FailedTGAllocs`` and a blocked eval that is re-run when an allocation completes (a job larger
than every node too, as on Nomad: ``DimensionExhausted``, ``ResourcesExhausted``), and one whose constraints or
datacenters no node meets never places (``nodes``, ``scheduler``). A docker or exec task above its memory is
OOM-killed as a cgroup would (``client``). :meth:`NomadDouble.leader_loss`
opens windows in which the API answers ``500 No cluster leader`` or drops connections while the cluster keeps
working (``faults``). :meth:`NomadDouble.gc` and ``PUT /v1/system/gc`` collect dead jobs (``gc``). Two
dispatches of one token inside ``dispatch_race_window_s`` race as on Nomad 1.11.1 or 1.11.2 (``jobs``).
``stats`` counts processes started, dispatches, stops and requests for tests and benches.

Templates and Vault, as a client with Vault (and Consul) integration does it (N8, V3). Given ``vault_addr``
and ``vault_token`` (the token the client would derive from the task's workload identity) or
``consul_addr``, the client renders every task's ``Templates`` before the first start (``templates``:
``with secret``, ``.Data.data.x``, ``env``, ``key``, ``keyOrDefault``, ``keyExists``, ``index``; anything else
fails the task with a message naming it). Secrets are read with hvac and Consul keys with py-consul, the real
clients. Each template is written to its ``DestPath`` under the task directory (``local/``, ``secrets/``,
``alloc/``) with its ``Perms``; ``Envvars`` files are read back as the task's environment (over the spec's
``env``, under the runtime ``NOMAD_*`` variables). A task with a ``vault`` block also gets ``VAULT_TOKEN`` and
``secrets/vault_token`` unless its block says ``env = false`` / ``disable_file = true``. Data that is not
there (a missing secret or key, a 403, an unreachable server) gives a ``Template`` event "Missing:
vault.read(path)"; after a short bounded retry (Nomad keeps retrying) the task is failed with a ``Killing``
event "Template failed: ..." and never runs. So is a template using ``secret`` in a task without a ``vault``
block, a missing field under ``error_on_missing_key`` (without it the field renders ``<no value>``), and a
template the renderer does not support. Rendered values exist only in the task directory: events and
messages name paths and keys, never values. Templates render once: a secret that changes later does not
re-render or restart the task. Without ``vault_addr`` or ``consul_addr`` (or with
``render_templates=False``) nothing is rendered, so the project's specs run secret-free steps on a client
that has no Vault, as the executor contract needs.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from .acl import ACLEnforcer
from .client import Client
from .common import FIRST_INDEX, AllocRec, HTTPError, JobRec, send_signal
from .faults import Faults
from .gc import GarbageCollector
from .hcl import JobSpecError, hcl_to_job
from .jobs import IDEMPOTENCY_VERSIONS, JobEndpoint
from .nodes import make_nodes
from .plan import PlanEndpoint
from .prestart import Prestart
from .reads import Reads
from .routes import Handler, Routes
from .scheduler import Scheduler
from .state import StateStore


class NomadDouble(ACLEnforcer, Routes, Reads, JobEndpoint, PlanEndpoint, Scheduler, Client, Prestart, Faults,
                  GarbageCollector, StateStore):
    """A Nomad agent on a loopback port, with an in-memory state store and a client that runs tasks."""

    def __init__(self, *, env: dict[str, str] | None = None, python: str = sys.executable,
                 acl_token: str | None = None, acl_policies: dict[str, list[str]] | None = None,
                 consul_identity: Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], str | None] | None = None,
                 kill_timeout_s: float = 5.0, vault_addr: str | None = None,
                 vault_token: str | None = None, consul_addr: str | None = None,
                 consul_token: str | None = None, render_templates: bool | None = None,
                 inherit_env: bool = True, nodes: list[dict[str, Any]] | None = None,
                 gc_threshold_s: float = 4 * 3600, dispatch_idempotency: str = "1.11.2",
                 dispatch_race_window_s: float = 0.0) -> None:
        """``acl_token``: a management token (ACLs on); ``acl_policies``: ``{SecretID: [policy HCL, ...]}``,
        tokens whose policies the server enforces as :mod:`.acl` describes (ACLs on as well; no token is
        anonymous, with no policy). ``vault_addr``/``vault_token``: the client's Vault and the token it hands
        every task with a ``vault`` block; ``consul_addr``/``consul_token``: the client's Consul and its own
        token. ``consul_identity(job, group, task)``: the Consul token a task with a ``consul`` block gets for
        its templates by logging in with its workload identity (None: no binding rule matched).
        ``render_templates`` defaults to whether either is given. ``inherit_env``: tasks start from this
        process's environment (convenient for tests that configure steps through it); False gives them only
        ``PATH``/locale, ``env`` and what Nomad sets, as a Docker task gets, so nothing reaches a step but its
        spec, its templates and ``env``.

        The cluster: ``nodes`` (see :func:`.nodes.make_nodes`; default one node large enough for any test
        that does not ask for limits), ``gc_threshold_s`` (``job_gc_threshold``, used by :meth:`gc`),
        ``dispatch_idempotency`` (``"1.11.2"`` or ``"1.11.1"``: how the FSM treats a second dispatch of one
        token that passed the check, see :meth:`_dispatch`) and ``dispatch_race_window_s`` (the time between a
        dispatch's token check on a snapshot and its Raft apply; 0: check and apply are one step)."""
        if dispatch_idempotency not in IDEMPOTENCY_VERSIONS:
            raise ValueError(f"dispatch_idempotency must be one of {IDEMPOTENCY_VERSIONS}, "
                             f"not {dispatch_idempotency!r}")
        self.dispatch_idempotency = dispatch_idempotency
        self.dispatch_race_window_s = dispatch_race_window_s
        self.gc_threshold_s = gc_threshold_s
        self._nodes = make_nodes(nodes, dispatch_idempotency)
        # Counters for tests and benches: processes started, children dispatched, stops (DELETE
        # /v1/job/:id) and requests received, jobs purged by GC, leader-loss answers and dropped connections,
        # and dispatches the 1.11.2 FSM dropped as duplicates.
        self.stats: dict[str, int] = dict.fromkeys(
            ("processes_started", "dispatches", "stops", "requests", "gc_purged", "no_leader_answers",
             "dropped_connections", "duplicate_dispatches_dropped"), 0)
        self._leader_windows: list[tuple[float, bool]] = []
        self._leader_triggers: list[tuple[str, float, bool]] = []
        self._leader_answers = 0
        self._wanted: dict[str, list[tuple[str, str, str | None]]] = {}
        self._unblock_queued = False
        self.env = dict(env or {})
        self.inherit_env = inherit_env
        self.python = python
        self.acl_token = acl_token
        self.acl_policies = acl_policies
        self._acl_setup()
        self.consul_identity = consul_identity
        self.kill_timeout_s = kill_timeout_s
        self.vault_addr = vault_addr
        self.vault_token = vault_token
        self.consul_addr = consul_addr
        self.consul_token = consul_token
        if render_templates is None:
            render_templates = vault_addr is not None or consul_addr is not None
        self.render_templates = render_templates
        self.address = ""
        self.dispatch_requests: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        # Test-only: called with (method, path, status, body bytes) for every response body (and stream chunk).
        self.response_hook: Callable[[str, str, int, bytes], None] | None = None
        self._cond = threading.Condition(threading.RLock())
        self._index = FIRST_INDEX
        self._tables: dict[str, int] = defaultdict(int)
        self._jobs: dict[tuple[str, str], JobRec] = {}
        self._allocs: dict[str, AllocRec] = {}
        self._evals: dict[str, dict[str, Any]] = {}
        self._faults: dict[str, deque[str]] = defaultdict(deque)
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._root: Path | None = None

    def start(self) -> str:
        """Listen on 127.0.0.1 (a free port) and return the agent's address, ``http://127.0.0.1:PORT``."""
        self._root = Path(tempfile.mkdtemp(prefix="nomad-double-"))
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.double = self  # type: ignore[attr-defined]
        self._server = server
        threading.Thread(target=server.serve_forever, name="nomad-double", daemon=True).start()
        self.address = f"http://127.0.0.1:{server.server_address[1]}"
        return self.address

    def stop(self) -> None:
        """Stop serving, wake blocked queries and kill every task process (their process groups)."""
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
            runs = [run for rec in self._allocs.values() for run in rec.tasks.values()]
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for run in runs:
            send_signal(run.proc, signal.SIGKILL)
        for run in runs:
            if run.proc is not None:
                run.proc.wait()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> NomadDouble:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def load_hcl(self, path_or_text: str | os.PathLike[str], variables: dict[str, str] | None = None,
                 namespace: str = "default") -> str:
        """Parse a jobspec (a path or HCL text), register it as ``nomad job run`` would; return its id."""
        text = str(path_or_text)
        if isinstance(path_or_text, os.PathLike) or ("\n" not in text and Path(text).is_file()):
            text = Path(path_or_text).read_text()
        job = hcl_to_job(text, variables)
        try:
            self._register(job, namespace)
        except HTTPError as exc:  # what `nomad job run` would print
            raise JobSpecError(exc.reason) from None
        return str(job["ID"])

    def load_specs(self, directory: str | os.PathLike[str],
                   variables: dict[str, str] | None = None) -> list[str]:
        """:meth:`load_hcl` every ``*.nomad.hcl`` in ``directory`` (sorted); return the job ids."""
        return [self.load_hcl(path, variables) for path in sorted(Path(directory).glob("*.nomad.hcl"))]

    def task_dir(self, alloc_id: str, task: str) -> Path:
        """The directory a task of an allocation runs in (``local/``, ``secrets/``, ``tmp/``)."""
        with self._cond:
            return self._allocs[alloc_id].root / task

    @property
    def processes_started(self) -> int:
        """How many task processes the client has started (``stats["processes_started"]``)."""
        return self.stats["processes_started"]

    @property
    def nodes(self) -> list[dict[str, Any]]:
        """A copy of the cluster's nodes (``ID``, ``Name``, ``Datacenter``, ``NodeClass``, ``NodeResources``...)."""
        with self._cond:
            return copy.deepcopy(self._nodes)
