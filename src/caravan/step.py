"""The inside of a step: read the ``NOMAD_META_*`` contract, write the output artifact, exit.

Every ``jobs/<step>.py`` ends with ``run_step(main, job="<step>")``. The same code runs in a
Nomad task and under the local executor, because both hand it the same environment:

=======================  ===================================================================
``caravan_output``       URI of the artifact to publish
``caravan_artifact_id``  its id (the address below the store root)
``caravan_identity``     JSON: family, params, upstream ids, code version (recorded in the manifest)
``caravan_inputs``       JSON object: input name -> artifact URI
``caravan_params``       JSON object: the step's hyperparameters
``caravan_run_id``       the pipeline run this step belongs to
``caravan_job``          JSON: job spec name and sha256
=======================  ===================================================================

Exit codes: 0 published (or found already published), 1 the step failed, 2 the meta breaks the
contract. Secrets never travel in meta: a step reads them from its secret source.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from .addressing import Address, unescape
from .artifacts import Artifact, ArtifactWriter
from .errors import CaravanError
from .executors.jobspec import CONTRACT_META
from .storage import open_store
from .storage.base import encode_path

log = logging.getLogger("caravan.step")


class ContractError(CaravanError):
    """The step's environment does not carry a valid caravan job contract."""


def read_meta(env: Mapping[str, str]) -> dict[str, str]:
    """The contract's meta values from ``NOMAD_META_<key>`` (or Nomad's upper-cased copy)."""
    meta = {}
    for key in CONTRACT_META:
        value = env.get(f"NOMAD_META_{key}", env.get(f"NOMAD_META_{key.upper()}"))
        if value is None:
            raise ContractError(f"NOMAD_META_{key} is not set; is this running as a caravan step?")
        meta[key] = value
    return meta


def _json(meta: Mapping[str, str], key: str) -> Any:
    try:
        return json.loads(meta[key])
    except ValueError as exc:
        raise ContractError(f"NOMAD_META_{key} is not JSON: {exc}") from exc


def artifact_at(uri: str, artifact_id: str, identity: Mapping[str, Any] | None = None) -> Artifact:
    """The artifact at ``uri`` with id ``artifact_id``; with ``identity``, checked to hash to that id."""
    # An id made before ids were URI-safe (with '%' in it) ends its URI percent-encoded.
    suffix = next((s for s in ("/" + artifact_id, "/" + encode_path(artifact_id)) if uri.endswith(s)), None)
    if suffix is None:
        raise ContractError(f"artifact URI {uri!r} does not end with its id {artifact_id!r}")
    store = open_store(uri[: -len(suffix)])
    segments = artifact_id.split("/")
    partition_key = segments[1].split("=", 1)[0] if len(segments) == 3 else None
    if identity is not None:
        address = Address.from_identity(identity, partition_key=unescape(partition_key) if partition_key else None)
        if address.key != artifact_id:
            raise ContractError(f"caravan_identity hashes to {address.key!r}, not to the artifact id {artifact_id!r}")
        return Artifact(store, address)
    return Artifact(store, artifact_id)


@dataclass
class StepContext:
    """What a step function gets: its output writer, its inputs, its hyperparameters."""

    job: str
    output: Artifact
    writer: ArtifactWriter
    inputs: dict[str, Artifact]
    params: dict[str, Any]
    run_id: str
    log: logging.Logger = field(default=log)


def executor_info(env: Mapping[str, str]) -> dict[str, Any]:
    """Where this step runs, for the manifest: executor name, Nomad job and allocation, pid, host."""
    return {
        "name": env.get("CARAVAN_STEP_EXECUTOR", "nomad" if "NOMAD_ALLOC_ID" in env else "unknown"),
        "job_id": env.get("NOMAD_JOB_ID"),
        "alloc_id": env.get("NOMAD_ALLOC_ID"),
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }


def execute_step(fn: Callable[[StepContext], None], job: str, env: Mapping[str, str] | None = None, *,
                 track: bool = False) -> int:
    """Run one step function under the contract and return its exit code (see the module docstring)."""
    env = os.environ if env is None else env
    try:
        meta = read_meta(env)
        identity = _json(meta, "caravan_identity")
        output = artifact_at(meta["caravan_output"], meta["caravan_artifact_id"], identity)
        inputs = {name: artifact_at(uri, _id_of(uri, identity, name))
                  for name, uri in _json(meta, "caravan_inputs").items()}
        params = _json(meta, "caravan_params")
        job_info = _json(meta, "caravan_job")
    except CaravanError as exc:
        print(f"caravan step {job}: bad job contract: {exc}", file=sys.stderr, flush=True)
        return 2
    if output.exists():
        log.info("%s is already published; nothing to do", output.uri)
        return 0
    writer = output.writer(run_id=meta["caravan_run_id"], job=job_info, executor=executor_info(env))
    context = StepContext(job=job, output=output, writer=writer, inputs=inputs, params=params,
                          run_id=meta["caravan_run_id"])
    try:
        with writer:
            fn(context)
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        print(f"caravan step {job} failed for {output.id}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    log.info("%s: %s", output.uri, writer.outcome)
    if track:
        from .tracking import log_run

        log_run(experiment=str(identity.get("family") or job), artifact_id=output.id, artifact_uri=output.uri,
                params=params, metrics=writer.metrics, tags={"caravan.job": job, "caravan.run_id": context.run_id})
    return 0


def _id_of(uri: str, identity: Mapping[str, Any], name: str) -> str:
    """An input's artifact id: the upstream id recorded under ``name``, which the URI must end with."""
    upstream = identity.get("upstream")
    candidates = list(_flatten_ids(upstream))
    for candidate in candidates:
        if uri.endswith("/" + candidate):
            return str(candidate)
    raise ContractError(f"input {name!r} ({uri}) is not among the upstream artifacts {candidates}")


def _flatten_ids(struct: Any) -> list[str]:
    if isinstance(struct, str):
        return [struct]
    if isinstance(struct, Mapping):
        return [i for v in struct.values() for i in _flatten_ids(v)]
    if isinstance(struct, list):
        return [i for v in struct for i in _flatten_ids(v)]
    return []


def run_step(fn: Callable[[StepContext], None], *, job: str, track: bool = False) -> NoReturn:
    """Entry point for ``jobs/<step>.py``: run ``fn`` under the contract and exit with its code.

    ``track``: also record the published artifact as an MLflow run when tracking is configured.
    """
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {job} %(levelname)s %(message)s")
    sys.exit(execute_step(fn, job, track=track))
