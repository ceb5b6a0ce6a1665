"""Parameter-addressed, append-only artifacts, and the luigi task that produces them.

An artifact is a folder at ``{root}/{Family}/{partition}/{params}--{digest}/``. A writer
stages its files under ``_attempts/<attempt>/`` and publishes by creating
``_MANIFEST.json`` with a create-if-absent write: the artifact is complete exactly when
the manifest exists, the manifest names the attempt whose files it vouches for (with size
and sha256 of each), and a second publisher can never replace it. A writer that dies
before publishing leaves only an attempt folder, which counts for nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import luigi
import luigi.parameter
from luigi.task import flatten

from .addressing import MANIFEST_NAME, Address
from .config import artifact_root
from .errors import ArtifactCorruptError, ArtifactError, ArtifactExistsError, ArtifactNotFoundError
from .stamps import new_id, utc_now
from .storage import Store, open_store
from .version import __version__

if TYPE_CHECKING:
    import pyarrow

ATTEMPTS_DIR = "_attempts"
LOGS_DIR = "_logs"
MANIFEST_FORMAT = 1
_RESERVED = {MANIFEST_NAME, ATTEMPTS_DIR, LOGS_DIR}


log = logging.getLogger(__name__)

_RUN_ID = os.environ.get("CARAVAN_RUN_ID") or new_id()


def current_run_id() -> str:
    """The id of this pipeline run (``CARAVAN_RUN_ID`` or one made when the process started)."""
    return _RUN_ID


def check_file_name(name: str) -> str:
    """Reject file names that could escape the artifact or collide with caravan's own entries."""
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts) or "\\" in name or "\x00" in name:
        raise ValueError(f"artifact file name {name!r} must be a relative path of non-empty segments "
                         "without '.', '..', backslashes or NUL")
    if parts[0] in _RESERVED:
        raise ValueError(f"artifact file name {name!r} uses a name caravan reserves ({', '.join(sorted(_RESERVED))})")
    return name


class Artifact(luigi.Target):
    """One artifact in a store: its address, its manifest, and its files."""

    def __init__(self, store: Store, address: Address | str) -> None:
        """``address`` is an :class:`Address`, or just an artifact id to open a published artifact for reading."""
        self.store = store
        self.address = address if isinstance(address, Address) else None
        self._key = address.key if isinstance(address, Address) else address.strip("/")
        self._manifest: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Artifact({self.uri!r})"

    @property
    def id(self) -> str:
        """Stable id: the address below the store root (the same on every store)."""
        return self._key

    @property
    def key(self) -> str:
        """The artifact's folder key inside its store."""
        return self._key

    @property
    def prefix(self) -> str:
        """The listing prefix it shares with its siblings (family and partition)."""
        return self._key.rsplit("/", 1)[0] + "/"

    @property
    def name(self) -> str:
        """The last segment of its address: readable parameters and digest."""
        return self._key.rsplit("/", 1)[-1]

    @property
    def uri(self) -> str:
        """Where the artifact lives, e.g. ``s3://bucket/root/TrainRanker/date=.../...--digest``."""
        return self.store.uri(self.key)

    @property
    def manifest_key(self) -> str:
        return f"{self.key}/{MANIFEST_NAME}"

    def exists(self) -> bool:
        """True when the manifest is present and valid; a corrupt manifest raises, loudly."""
        if self._manifest is not None:
            return True
        try:
            self.manifest()
        except ArtifactNotFoundError:
            return False
        return True

    def manifest(self) -> dict[str, Any]:
        """The published manifest (read once, then remembered: it never changes)."""
        if self._manifest is None:
            raw = self.store.read(self.manifest_key)
            self._manifest = self._parse_manifest(raw)
            completion_index.mark(self)
        return self._manifest

    def _parse_manifest(self, raw: bytes) -> dict[str, Any]:
        try:
            manifest = json.loads(raw)
        except ValueError as exc:
            raise ArtifactCorruptError(f"manifest is not JSON: {exc}", artifact=self.id,
                                       store=self.store.root_uri) from exc
        if not isinstance(manifest, dict) or manifest.get("artifact_id") != self.id or not isinstance(
            manifest.get("files"), dict
        ):
            raise ArtifactCorruptError("manifest does not describe this artifact", artifact=self.id,
                                       store=self.store.root_uri)
        return manifest

    @property
    def metrics(self) -> dict[str, Any]:
        """Metrics the step recorded (empty when it recorded none)."""
        return dict(self.manifest().get("metrics") or {})

    def files(self) -> list[str]:
        """Names of the published files."""
        return sorted(self.manifest()["files"])

    def _file_key(self, name: str) -> str:
        return f"{self.key}/{ATTEMPTS_DIR}/{self.manifest()['attempt']}/{name}"

    def file_uri(self, name: str) -> str:
        """The URI of a published file, for other tools (``pyarrow.dataset.dataset(artifact.file_uri(...))``)."""
        if name not in self.manifest()["files"]:
            raise ArtifactNotFoundError(f"no file {name!r}; it has {self.files()}", artifact=self.id,
                                        store=self.store.root_uri)
        return self.store.uri(self._file_key(name))

    def read_bytes(self, name: str) -> bytes:
        """A published file's bytes, checked against the size and sha256 in the manifest."""
        entry = self.manifest()["files"].get(name)
        if entry is None:
            raise ArtifactNotFoundError(f"no file {name!r}; it has {self.files()}", artifact=self.id,
                                        store=self.store.root_uri)
        data = self.store.read(self._file_key(name))
        if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ArtifactCorruptError(f"file {name!r} does not match its manifest (size or sha256)",
                                       artifact=self.id, store=self.store.root_uri)
        return data

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")

    @contextlib.contextmanager
    def local_file(self, name: str) -> Iterator[Path]:
        """A published file as a local path, checked against its manifest, without holding it in memory.

        On the local store that is the file itself; elsewhere a temporary copy, streamed chunk by chunk
        and removed on exit. Either way its size and sha256 are checked first (read once, in chunks), so
        ``pyarrow.dataset`` can then scan it in record batches.
        """
        entry = self.manifest()["files"].get(name)
        if entry is None:
            raise ArtifactNotFoundError(f"no file {name!r}; it has {self.files()}", artifact=self.id,
                                        store=self.store.root_uri)
        from .storage.local import LocalStore

        key = self._file_key(name)
        with contextlib.ExitStack() as stack:
            if isinstance(self.store, LocalStore):
                path = self.store.path(key)
                chunks: Iterable[bytes | memoryview] = _file_chunks(path)
                sink = None
            else:
                folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="caravan-artifact-"))
                path = Path(folder, name.replace("/", "_"))
                chunks = self.store.read_chunks(key)
                sink = stack.enter_context(open(path, "wb"))
            digest, size = hashlib.sha256(), 0
            try:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    if sink is not None:
                        sink.write(chunk)
            except (FileNotFoundError, NotADirectoryError) as exc:
                raise ArtifactNotFoundError(f"file {name!r} is listed in the manifest but missing",
                                            artifact=self.id, store=self.store.root_uri) from exc
            if sink is not None:
                sink.close()
            if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
                raise ArtifactCorruptError(f"file {name!r} does not match its manifest (size or sha256)",
                                           artifact=self.id, store=self.store.root_uri)
            yield path

    def read_json(self, name: str) -> Any:
        return json.loads(self.read_bytes(name))

    def read_parquet(self, name: str, columns: list[str] | None = None) -> pyarrow.Table:
        import pyarrow as pa
        import pyarrow.parquet as pq

        return pq.read_table(pa.BufferReader(self.read_bytes(name)), columns=columns)

    def writer(self, *, run_id: str | None = None, job: Mapping[str, Any] | None = None,
               executor: Mapping[str, Any] | None = None) -> ArtifactWriter:
        """A writer that stages files for this artifact; use it as a context manager."""
        if self.address is None:
            raise ArtifactError("opened by id only, for reading; writing needs its full address",
                                artifact=self.id, store=self.store.root_uri)
        return ArtifactWriter(self, run_id=run_id, job=job, executor=executor)

    def write_log(self, run_id: str, name: str, data: bytes) -> str:
        """Keep a step's log beside the artifact (outside its immutable files); returns the log's URI."""
        key = f"{self.key}/{LOGS_DIR}/{run_id}/{check_file_name(name)}"
        self.store.write(key, data)
        return self.store.uri(key)


def _file_chunks(path: Path, size: int = 8 * 2**20) -> Iterator[memoryview]:
    """The file's bytes in chunks that reuse one buffer (each chunk is valid until the next is read)."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    with open(path, "rb") as handle:
        while n := handle.readinto(buffer):
            yield view[:n]


class ArtifactWriter:
    """Stages files for one artifact and publishes them with the manifest, last.

    Used as a context manager it publishes on a clean exit and discards its staging
    area on an exception. ``publish()`` returns ``"published"``, or ``"already complete"``
    when an identical artifact was published first; different content raises
    :class:`ArtifactExistsError`.
    """

    def __init__(self, artifact: Artifact, *, run_id: str | None = None, job: Mapping[str, Any] | None = None,
                 executor: Mapping[str, Any] | None = None) -> None:
        self.artifact = artifact
        self.run_id = run_id or current_run_id()
        self.job = dict(job) if job else None
        self.executor = dict(executor) if executor else {"name": "inline", "pid": os.getpid(),
                                                         "host": socket.gethostname()}
        self.attempt = new_id()
        self.metrics: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self._files: dict[str, dict[str, Any]] = {}
        self._started = utc_now()
        self._t0 = time.monotonic()
        self.outcome: str | None = None

    @property
    def _prefix(self) -> str:
        return f"{self.artifact.key}/{ATTEMPTS_DIR}/{self.attempt}/"

    def _check_open(self) -> None:
        if self.outcome is not None:
            raise ArtifactExistsError(f"writer already {self.outcome}", artifact=self.artifact.id,
                                      store=self.artifact.store.root_uri)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Stage one file (writing the same name again replaces the staged copy)."""
        self._check_open()
        check_file_name(name)
        self.artifact.store.write(self._prefix + name, data)
        self._files[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def write_file(self, name: str, path: Path | str) -> None:
        """Stage the local file ``path`` as ``name``, streamed: hashed and sent in chunks, never whole in memory.

        For large outputs written batch by batch to a local temporary file (a Parquet split); the
        publication contract is unchanged: nothing counts until the manifest is created.
        """
        self._check_open()
        check_file_name(name)
        digest, size = hashlib.sha256(), 0
        for chunk in _file_chunks(Path(path)):
            digest.update(chunk)
            size += len(chunk)
        self.artifact.store.write_file(self._prefix + name, Path(path))
        if Path(path).stat().st_size != size:
            raise ArtifactError(f"{path} changed while it was staged as {name!r}", artifact=self.artifact.id,
                                store=self.artifact.store.root_uri)
        self._files[name] = {"size": size, "sha256": digest.hexdigest()}

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def write_json(self, name: str, value: Any) -> None:
        self.write_bytes(name, (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8"))

    def write_parquet(self, name: str, table: pyarrow.Table) -> None:
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self.write_bytes(name, buffer.getvalue())

    def build_manifest(self) -> dict[str, Any]:
        address = self.artifact.address
        if address is None:  # Artifact.writer() refuses id-only artifacts
            raise ArtifactError("cannot build a manifest without an address", artifact=self.artifact.id)
        finished = utc_now()
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "artifact_id": self.artifact.id,
            "task_family": address.family,
            "params": dict(address.params),
            "upstream": address.upstream,
            "code_version": address.code_version,
            "attempt": self.attempt,
            "files": dict(sorted(self._files.items())),
            "job": self.job,
            "executor": self.executor,
            "run_id": self.run_id,
            "started_at": self._started,
            "finished_at": finished,
            "duration_s": round(time.monotonic() - self._t0, 6),
            "metrics": self.metrics,
            "caravan_version": __version__,
        }
        manifest.update(self.extra)
        return manifest

    def publish(self) -> str:
        """Create the manifest if nobody has; return the outcome (see the class docstring)."""
        self._check_open()
        artifact, store = self.artifact, self.artifact.store
        manifest = self.build_manifest()
        body = (json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")
        try:
            created = store.create(artifact.manifest_key, body)
        except BaseException:
            self._discard_after_failed_publish()
            raise
        if created:
            artifact._manifest = json.loads(body)
            completion_index.mark(artifact)
            self.outcome = "published"
            self._prune_other_attempts()
            return self.outcome
        self.discard()  # someone else published first: ours are not needed whatever theirs hold
        theirs = Artifact(store, artifact.id).manifest()
        if theirs.get("files") == manifest["files"]:
            self.outcome = "already complete"
            return self.outcome
        raise ArtifactExistsError(
            "already published with different content; published artifacts are never rewritten "
            f"(published by run {theirs.get('run_id')}, attempt {theirs.get('attempt')})",
            artifact=artifact.id, store=store.root_uri,
        )

    def _discard_after_failed_publish(self) -> None:
        """Remove the staging area after ``create`` raised, unless the manifest made it anyway.

        A create can fail after the store took it (a timeout on the answer): a manifest that names
        this attempt vouches for these files, which must then stay. When the store cannot even say,
        the files stay too; the next publication of this artifact prunes them. Never raises: the
        error that stopped the publication is the one to report.
        """
        try:
            raw = self.artifact.store.read(self.artifact.manifest_key)
        except ArtifactNotFoundError:
            raw = None
        except Exception as exc:  # the publication's own error is the one that matters
            log.warning("%s: publishing failed and the store cannot say whether the manifest exists (%s); "
                        "staged files kept under %s", self.artifact.uri, exc, self._prefix)
            return
        try:
            if raw is None or json.loads(raw).get("attempt") != self.attempt:
                self.discard()
        except Exception as exc:  # as above
            log.warning("%s: could not remove the staged files under %s after a failed publication: %s",
                        self.artifact.uri, self._prefix, exc)

    def _prune_other_attempts(self) -> None:
        # Attempts that lost, or died before publishing, are garbage once a manifest exists.
        prefix = f"{self.artifact.key}/{ATTEMPTS_DIR}/"
        others = {key[len(prefix):].split("/", 1)[0] for key in self.artifact.store.list_keys(prefix)}
        for attempt in others - {self.attempt}:
            self.artifact.store.delete_prefix(f"{prefix}{attempt}/")

    def discard(self) -> None:
        """Delete this writer's staging area (never anything published)."""
        self.artifact.store.delete_prefix(self._prefix)
        if self.outcome is None:
            self.outcome = "discarded"

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            if self.outcome is None:
                self.discard()
            return
        if self.outcome is None:
            self.publish()


class CompletionIndex:
    """Answers "is this artifact published?" cheaply for many artifacts at once.

    Published artifacts are remembered for good: they are never unpublished, so a "yes" can
    never go stale. A "no" can (another worker, or a forked luigi task process, may publish
    meanwhile), so a remembered listing is never trusted for "no": ``is_complete`` checks a
    missing artifact directly, and only ``complete_many`` answers "no" from the listing it
    has just made.
    """

    def __init__(self) -> None:
        self._published: set[str] = set()
        self._lock = threading.Lock()

    def mark(self, artifact: Artifact) -> None:
        with self._lock:
            self._published.add(artifact.uri)

    def unmark(self, artifact: Artifact) -> None:
        """Forget that ``artifact`` is published (``caravan verify --quarantine`` took its manifest away)."""
        with self._lock:
            self._published.discard(artifact.uri)

    def is_known(self, artifact: Artifact) -> bool:
        """Whether ``artifact`` is already known to be published (no request needed)."""
        with self._lock:
            return artifact.uri in self._published

    def forget(self) -> None:
        with self._lock:
            self._published.clear()

    def prefetch(self, artifacts: Iterable[Artifact]) -> dict[str, set[str]]:
        """List each distinct prefix of ``artifacts`` once; remember what is published; return the listings."""
        by_prefix: dict[str, tuple[Store, str]] = {}
        for artifact in artifacts:
            by_prefix.setdefault(artifact.store.uri(artifact.prefix), (artifact.store, artifact.prefix))
        listings = {}
        for prefix_uri, (store, prefix) in by_prefix.items():
            names = store.children_with(prefix, MANIFEST_NAME)
            listings[prefix_uri] = names
            with self._lock:
                self._published.update(f"{prefix_uri}{name}" for name in names)
        return listings

    def is_complete(self, artifact: Artifact) -> bool:
        return self.is_known(artifact) or artifact.exists()

    def complete_many(self, artifacts: Iterable[Artifact]) -> list[bool]:
        """Completeness of each artifact, listing every distinct prefix once."""
        artifacts = list(artifacts)
        listings = self.prefetch(a for a in artifacts if not self.is_known(a))
        return [self.is_known(a) or a.name in listings.get(a.store.uri(a.prefix), set()) for a in artifacts]


completion_index = CompletionIndex()

_DATE_TYPES: tuple[type, ...] = (luigi.parameter._DateParameterBase, luigi.parameter._DatetimeParameterBase)


def canonical_value(param: luigi.Parameter, value: Any) -> str:
    """A parameter value in the one form the command line and Python give alike.

    ``FloatParameter`` keeps ``4`` as an int when a task is built in Python, but parses ``--x 4``
    as ``4.0``: serialising, parsing and serialising again gives both the same text.
    """
    text = param.serialize(value)
    try:
        return str(param.serialize(param.parse(text)))
    except (ValueError, TypeError):
        return str(text)


def _upstream_ids(struct: Any) -> Any:
    """Ids of what a task requires, in the shape ``requires()`` returned them."""
    if struct is None:
        return None
    if isinstance(struct, Mapping):
        return {str(k): _upstream_ids(v) for k, v in struct.items()}
    if isinstance(struct, (list, tuple)):
        return [_upstream_ids(v) for v in struct]
    if isinstance(struct, luigi.Task):
        if isinstance(struct, ArtifactTask):
            return struct.output().id
        out = struct.output()
        # External data identified by content when its target can say (caravan.dataio.ParquetTarget.fingerprint).
        paths = [t.fingerprint() if callable(getattr(t, "fingerprint", None))
                 else getattr(t, "path", None) or getattr(t, "uri", None) for t in flatten(out)]
        return paths if any(paths) else struct.task_id
    if isinstance(struct, Iterable) and not isinstance(struct, (str, bytes)):
        return [_upstream_ids(v) for v in struct]
    raise TypeError(f"requires() returned {type(struct).__name__}, which is not a task or a structure of tasks")


class ArtifactTask(luigi.Task):
    """A luigi task whose output is one :class:`Artifact`, addressed by its parameters.

    Subclasses set ``code_version`` (bump it when the code's output changes) and may set
    ``partition_by`` to name the date-like parameter that partitions their artifacts
    (by default the parameter named ``date``, else the first date-typed parameter), and
    ``path_params`` to choose which parameters the path shows.
    """

    code_version: ClassVar[str] = "1"
    partition_by: ClassVar[str | None] = None
    #: Parameters shown in the path (default: every significant one). The digest covers them all,
    #: so a task with many parameters can show the few that tell its artifacts apart.
    path_params: ClassVar[tuple[str, ...] | None] = None

    def address(self) -> Address:
        """The artifact address (computed once per task instance)."""
        cached: Address | None = self.__dict__.get("_caravan_address")
        if cached is None:
            params = {name: canonical_value(param, getattr(self, name))
                      for name, param in self.get_params() if param.significant}
            cached = Address(
                family=self.get_task_family(),
                params=params,
                upstream=_upstream_ids(self.requires()),
                code_version=str(self.code_version),
                partition_key=self._partition_key(),
                readable_keys=self.path_params,
            )
            self.__dict__["_caravan_address"] = cached
        return cached

    @classmethod
    def _partition_key(cls) -> str | None:
        significant = [(n, p) for n, p in cls.get_params() if p.significant]
        if cls.partition_by is not None:
            if cls.partition_by not in dict(significant):
                raise ValueError(f"{cls.__name__}.partition_by = {cls.partition_by!r} is not a significant parameter")
            return cls.partition_by
        dates = [n for n, p in significant if isinstance(p, _DATE_TYPES)]
        if "date" in dates:
            return "date"
        return dates[0] if dates else None

    def output(self) -> Artifact:
        return Artifact(open_store(artifact_root()), self.address())

    def complete(self) -> bool:
        return completion_index.is_complete(self.output())

    def deps(self) -> list[luigi.Task]:
        # luigi asks each dependency complete() in turn; one listing per prefix answers them all.
        deps: list[luigi.Task] = super().deps()
        artifact_deps = [d.output() for d in deps if isinstance(d, ArtifactTask)]
        if len(artifact_deps) > 1:
            completion_index.prefetch(a for a in artifact_deps if not completion_index.is_known(a))
        return deps

    @classmethod
    def bulk_complete(cls, parameter_tuples: Iterable[Any]) -> list[Any]:
        """The parameter values whose artifacts are published (used by luigi's Range tools)."""
        values = list(parameter_tuples)
        tasks = []
        for value in values:
            if isinstance(value, Mapping):
                tasks.append(cls(**value))
            elif isinstance(value, (list, tuple)):
                tasks.append(cls(*value))
            else:
                tasks.append(cls(value))
        flags = completion_index.complete_many(t.output() for t in tasks)
        return [value for value, done in zip(values, flags, strict=True) if done]


def complete_many(tasks: Iterable[luigi.Task]) -> dict[luigi.Task, bool]:
    """Completeness of many tasks; artifact tasks cost one listing per prefix, others their ``complete()``."""
    tasks = list(tasks)
    artifact_tasks = [t for t in tasks if isinstance(t, ArtifactTask)]
    done = completion_index.complete_many(t.output() for t in artifact_tasks)
    flags: dict[luigi.Task, bool] = dict(zip(artifact_tasks, done, strict=True))
    return {t: flags[t] if t in flags else bool(t.complete()) for t in tasks}
