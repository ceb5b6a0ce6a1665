"""What a run did, told on the ``luigi`` command line.

``luigi --module pipelines.… Task --local-scheduler`` configures logging for its own
``luigi-interface`` logger only, so caravan's records (steps started and finished, the step's own
progress lines, the metrics) would never show. Importing caravan's tasks registers luigi event
handlers; at the first scheduling event, when luigi has already set up its logging, they look at
what luigi did:

- luigi configured its default (a handler on ``luigi-interface``, nothing on the root logger):
  caravan's records are printed beside luigi's, at luigi's ``--log-level`` (INFO at least), and when
  luigi logs its execution summary, caravan's own summary follows it (built/reused counts, each
  artifact, then each task's own lines: the grid table with the winner, the promotion verdict).
- logging was configured any other way (``logging_conf_file``, a ``[logging]`` section, a root
  handler, ``no_configure_logging``): nothing is added, and that configuration decides.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import luigi

log = logging.getLogger("caravan.progress")

_INTERFACE = "luigi-interface"
_SUMMARY_MARK = "Luigi Execution Summary"
#: Metrics shown on a "finished" line, in this order, when a step recorded them.
KEY_METRICS = ("valid_auc", "test_auc", "test_ndcg@10", "valid_logloss", "best_iteration", "rows_train", "rows_test")
_MAX_METRICS = 6


class StoryFormatter(logging.Formatter):
    """luigi's ``LEVEL: message`` lines; a step's relayed line is printed as the step wrote it (time, step, level)."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if record.name.startswith("caravan.step.") and not record.exc_info:
            return record.getMessage()
        return super().format(record)


class StoryHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes caravan's records to stderr beside luigi's own lines."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(StoryFormatter())


class _SummaryHandler(logging.Handler):
    """Follows luigi's execution summary with caravan's."""

    def emit(self, record: logging.LogRecord) -> None:
        if _SUMMARY_MARK in str(record.msg):
            _story.finish()


class _Story:
    """The tasks this process scheduled (luigi's scheduling events happen in the worker's main process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.tasks: dict[str, luigi.Task] = {}
            self.edges: dict[str, list[str]] = {}

    def seen(self, task: luigi.Task) -> None:
        with self._lock:
            self.tasks.setdefault(task.task_id, task)

    def edge(self, task: luigi.Task, dep: luigi.Task) -> None:
        self.seen(task)
        self.seen(dep)
        with self._lock:
            self.edges.setdefault(task.task_id, []).append(dep.task_id)

    def ordered(self) -> list[luigi.Task]:
        """Every task seen, upstream first."""
        with self._lock:
            tasks, edges = dict(self.tasks), {k: list(v) for k, v in self.edges.items()}
        done: dict[str, luigi.Task] = {}

        def visit(task_id: str, path: frozenset[str]) -> None:
            if task_id in done or task_id in path:
                return
            for dep in edges.get(task_id, []):
                visit(dep, path | {task_id})
            done[task_id] = tasks[task_id]

        for task_id in tasks:
            visit(task_id, frozenset())
        return list(done.values())

    def finish(self) -> None:
        try:
            lines = summary_lines(self.ordered())
        finally:
            self.reset()
        if lines:
            log.info("%s", "\n".join(["", "===== caravan summary =====", *lines, ""]))


_story = _Story()


def format_metrics(metrics: dict[str, Any]) -> str:
    """The metrics worth a glance, ``name value`` pairs (key metrics first, floats to 4 places)."""
    names = [m for m in KEY_METRICS if m in metrics]
    names += sorted(k for k, v in metrics.items() if k not in names and isinstance(v, (int, float))
                    and not isinstance(v, bool))
    shown = [f"{n} {metrics[n]:.4f}" if isinstance(metrics[n], float) else f"{n} {metrics[n]}"
             for n in names[:_MAX_METRICS]]
    return ", ".join(shown)


def summary_lines(tasks: list[luigi.Task]) -> list[str]:
    """caravan's summary of a run: counts, one line per artifact, then each complete task's own lines.

    An artifact was built by this run when its manifest carries this run's id (the luigi worker's, which
    every step it dispatches records); complete with another id, it was reused. Built ones are listed in
    the order they finished, after the reused ones.
    """
    from .artifacts import ArtifactTask, current_run_id

    entries: dict[str, list[tuple[str, str, luigi.Task]]] = {"reused": [], "built": [], "not built": []}
    for task in tasks:
        if not isinstance(task, ArtifactTask):
            continue
        artifact = task.output()
        try:
            manifest = artifact.manifest() if task.complete() else None
        except Exception as exc:  # a store outage at the very end must not hide luigi's summary
            entries["not built"].append(("", f"  {'unknown':<9} {'':>7}  {artifact.id}  ({exc})", task))
            continue
        if manifest is None:
            entries["not built"].append(("", f"  {'not built':<9} {'':>7}  {artifact.id}", task))
        elif manifest.get("run_id") == current_run_id():
            seconds = float(manifest.get("duration_s") or 0)
            took = f"{seconds:.1f} s" if seconds >= 0.1 else "<0.1 s"
            entries["built"].append((str(manifest.get("finished_at", "")), f"  {'built':<9} {took:>7}  {artifact.id}",
                                     task))
        else:
            entries["reused"].append(("", f"  {'reused':<9} {'':>7}  {artifact.id}", task))
    if not any(entries.values()):
        return []
    entries["built"].sort(key=lambda entry: entry[0])
    ordered = [*entries["reused"], *entries["built"], *entries["not built"]]
    extra: list[str] = []
    for _, _, task in ordered:
        own = getattr(task, "summary_lines", None)
        if task.output().exists() and callable(own):
            try:
                # A task may repeat what an upstream one said (a retraining shows its grid search's table).
                extra.extend(line for line in own() if line not in extra)
            except Exception as exc:
                extra.append(f"({task.get_task_family()} could not summarise itself: {exc})")
    head = f"built {len(entries['built'])}, reused {len(entries['reused'])}"
    if entries["not built"]:
        head += f", NOT built {len(entries['not built'])}"
    elif not entries["built"]:
        head += ": nothing rebuilt"
    root = ordered[-1][2].output().store.root_uri
    return [f"{head} (artifacts under {root})", *(line for _, line, _ in ordered), *(["", *extra] if extra else [])]


def configure_for_luigi() -> bool:
    """Show caravan's story on the luigi CLI when luigi configured its default logging (see the module
    docstring); True when it is shown. Safe to call often: it installs once per process."""
    caravan = logging.getLogger("caravan")
    if any(isinstance(h, StoryHandler) for h in caravan.handlers):
        return True
    interface = logging.getLogger(_INTERFACE)
    luigi_default = [h for h in interface.handlers if not isinstance(h, _SummaryHandler)]
    if not luigi_default or logging.getLogger().handlers:
        return False
    level = max(logging.INFO, interface.getEffectiveLevel())
    handler = StoryHandler()
    handler.setLevel(level)
    caravan.addHandler(handler)
    if caravan.level == logging.NOTSET:  # an explicitly set level stays the user's
        caravan.setLevel(level)
    if not any(isinstance(h, _SummaryHandler) for h in interface.handlers):
        interface.addHandler(_SummaryHandler())  # after luigi's own handler: caravan's summary comes second
    return True


@luigi.Task.event_handler(luigi.Event.DEPENDENCY_PRESENT)
def _on_present(task: luigi.Task) -> None:
    if configure_for_luigi():  # otherwise nobody will ask for the summary: keep nothing
        _story.seen(task)


@luigi.Task.event_handler(luigi.Event.DEPENDENCY_DISCOVERED)
def _on_discovered(task: luigi.Task, dependency: luigi.Task) -> None:
    if configure_for_luigi():
        _story.edge(task, dependency)


def _artifact(task: luigi.Task) -> Any:
    from .artifacts import ArtifactTask

    return task.output() if isinstance(task, ArtifactTask) else None


_durations: dict[str, float] = {}


@luigi.Task.event_handler(luigi.Event.START)
def _on_start(task: luigi.Task) -> None:
    artifact = _artifact(task)
    if artifact is not None:
        if any(isinstance(h, StoryHandler) for h in logging.getLogger("caravan").handlers):
            _story.seen(task)
        log.info("started %s -> %s", task.get_task_family(), artifact.uri)


@luigi.Task.event_handler(luigi.Event.PROCESSING_TIME)
def _on_time(task: luigi.Task, seconds: float) -> None:
    _durations[task.task_id] = float(seconds)


@luigi.Task.event_handler(luigi.Event.SUCCESS)
def _on_success(task: luigi.Task) -> None:
    artifact = _artifact(task)
    if artifact is None:
        return
    seconds = _durations.pop(task.task_id, None)
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    metrics = format_metrics(artifact.metrics) if artifact.exists() else ""
    log.info("finished %s%s -> %s%s", task.get_task_family(), took, artifact.uri, f" ({metrics})" if metrics else "")


@luigi.Task.event_handler(luigi.Event.FAILURE)
def _on_failure(task: luigi.Task, exc: BaseException) -> None:
    artifact = _artifact(task)
    if artifact is not None:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # A failed step's own last words (its one-line reason) say more than its exit code.
        tail = [line for line in str(getattr(exc, "stderr_tail", "") or "").splitlines() if line.strip()]
        reason = f"{first}: {tail[-1].strip()}" if tail else first
        log.error("failed %s -> %s: %s", task.get_task_family(), artifact.uri, reason)
