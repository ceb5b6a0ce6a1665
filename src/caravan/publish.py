"""``caravan publish``: release the Nomad jobs with a new image, registering only what Nomad's plan says changed.

Publishing renders every ``nomad/*.nomad.hcl`` through Nomad itself (``POST /v1/jobs/parse`` with a
var-file): the image ``<repository>:<tag>``, the namespace, the datacenters and ``--var`` overrides, each
sent only to the specs that declare that variable. Nothing is registered unless every spec parses.

Each parsed job is then planned by Nomad (``PUT /v1/job/:id/plan`` with ``Diff: true``). Parse returns the
API-level form (node pool ``""``, port host network ``""``, check name ``""``) while Nomad stores the form
its admission hooks fill in (``"default"``, ``"default"``, ``service: "<svc>" check``); the plan runs those
hooks before it diffs, so its ``Diff.Type`` (``Added`` / ``Edited`` / ``None``) says created / changed /
unchanged without phantom changes. Only created and changed jobs are registered, with ``EnforceIndex`` at
the plan's ``JobModifyIndex``, so a concurrent register in between fails loudly instead of being
overwritten. Leader elections and dropped connections are waited out (``[publish] retry_s``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import luigi

from .config import environment, section, setting
from .errors import BackendRejected, BackendUnavailable, CaravanError, ConfigurationError, JobSpecError
from .executors.jobspec import labelled_blocks, plain_hcl
from .jsonable import plain
from .nomad_api import NomadAPI, backoff_delay

_T = TypeVar("_T")


class publish(luigi.Config):  # noqa: N801 - the class name is the luigi.cfg section name
    """``[publish]``: what ``caravan publish`` puts into every job spec."""

    image_repository = luigi.Parameter(
        default="caravan",
        description="Repository of the project image; the release tag is appended (<repository>:<tag>). "
        "Env CARAVAN_IMAGE_REPOSITORY wins.",
    )
    datacenters = luigi.ListParameter(
        default=(), description="Datacenters of every job, e.g. [\"dc1\"] (empty: each spec's default).",
    )
    variables: luigi.DictParameter[Any] = luigi.DictParameter(
        default={},
        description='More variables for every spec that declares them, e.g. {"artifact_root": "s3://bucket/caravan"}. '
        "--var wins.",
    )
    retry_s = luigi.FloatParameter(
        default=120.0, description="How long each Nomad call waits out a leader election or a dropped connection.",
    )


_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SHORT_CHANGES, _SHORT_VALUE = 5, 60


# -- specs and their variables --------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One job spec file and the variables it declares (name -> HCL type, e.g. ``list(string)``)."""

    path: Path
    text: str
    variables: Mapping[str, str]

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".nomad.hcl")


def read_spec(path: Path) -> Spec:
    """Read a spec and its ``variable`` blocks (python-hcl2); JobSpecError naming the file when it is not HCL."""
    import hcl2

    text = path.read_text()
    try:
        tree = plain_hcl(hcl2.loads(text))
    except Exception as exc:  # python-hcl2 raises lark's many exception types
        raise JobSpecError(f"{path} is not valid HCL: {exc}") from exc
    declared: dict[str, str] = {}
    for name, body in labelled_blocks(tree, "variable"):
        kind = str(body.get("type") or "any")
        declared[name] = kind[2:-1] if kind.startswith("${") and kind.endswith("}") else kind
    return Spec(path=path, text=text, variables=declared)


def coerce(name: str, text: str, kind: str) -> Any:
    """A ``--var NAME=VALUE`` string as a value of the variable's declared type."""
    try:
        if kind == "number":
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "bool":
            if text not in ("true", "false"):
                raise ValueError("expected true or false")
            return text == "true"
        if kind.startswith(("list", "set", "tuple")):
            if text.lstrip().startswith("["):
                value = json.loads(text)
                if not isinstance(value, list):
                    raise ValueError("expected a list")
                return value
            return [part.strip() for part in text.split(",") if part.strip()]
        if kind.startswith(("map", "object")):
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError("expected a JSON object")
            return value
    except ValueError as exc:
        raise ConfigurationError(f"--var {name}={text!r}: not a {kind}: {exc}") from None
    return text


def hcl_string(text: str) -> str:
    """``text`` as a quoted HCL string whose value is exactly ``text`` (no interpolation, no directive)."""
    out = []
    for char in text:
        if char in '\\"':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    # `${` and `%{` open templates in HCL strings. HCL's own escapes for them (`$${`, `%%{`) trip python-hcl2
    # when no `}` follows; a \u escape is literal text to every HCL parser and never opens a template.
    return '"' + "".join(out).replace("${", "\\u0024{").replace("%{", "\\u0025{") + '"'


def hcl_value(value: Any) -> str:
    """An HCL expression for a str, bool, int, finite float, list/tuple or string-keyed mapping."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(f"{value!r} is not a number HCL can hold")
        return repr(value)
    if isinstance(value, str):
        return hcl_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(hcl_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{hcl_string(str(k))} = {hcl_value(v)}" for k, v in value.items()) + "}"
    raise ConfigurationError(f"a variable cannot hold {type(value).__name__} {value!r}")


def render_var_file(values: Mapping[str, Any]) -> str:
    """An HCL var-file (``name = value`` lines, sorted) that sets ``values``."""
    return "".join(f"{name} = {hcl_value(values[name])}\n" for name in sorted(values))


def image_for(tag: str) -> str:
    """``<repository>:<tag>`` with the repository of ``CARAVAN_IMAGE_REPOSITORY`` or ``[publish]``."""
    if not _TAG.fullmatch(tag):
        raise ConfigurationError(f"--version {tag!r} is not a valid image tag ([A-Za-z0-9_][A-Za-z0-9_.-]*)")
    repository = setting("CARAVAN_IMAGE_REPOSITORY", section(publish).image_repository)
    if not repository or re.search(r"[:@]", repository.rsplit("/", 1)[-1]):
        raise ConfigurationError(f"image repository {repository!r} must name a repository without a tag or digest")
    return f"{repository}:{tag}"


def parse_var_flags(flags: Sequence[str]) -> dict[str, str]:
    """``NAME=VALUE`` strings as a dict (the last one of a name wins)."""
    out = {}
    for flag in flags:
        name, sep, value = flag.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
            raise ConfigurationError(f"--var {flag!r} is not NAME=VALUE")
        out[name] = value
    return out


def variables_for(spec: Spec, common: Mapping[str, Any], flags: Mapping[str, str]) -> dict[str, Any]:
    """The values one spec gets: ``common`` then ``--var`` flags, only for the variables it declares."""
    values = {name: value for name, value in common.items() if name in spec.variables}
    values.update({name: coerce(name, text, spec.variables[name]) for name, text in flags.items()
                   if name in spec.variables})
    return values


# -- Nomad's plan diff ----------------------------------------------------------------------------------

#: ``Type`` of a diff node in Nomad's plan (``nomad/structs/diff.go``).
ADDED, DELETED, EDITED, NONE = "Added", "Deleted", "Edited", "None"
#: What a job's plan diff type means for publish.
ACTIONS = {ADDED: "created", EDITED: "changed", NONE: "unchanged"}


@dataclass(frozen=True)
class Change:
    """One change in Nomad's plan diff: ``Added``/``Deleted``/``Edited``, the path of the field in the job
    (``TaskGroups[g].Tasks[t].Config.image``), and its old and new values as Nomad prints them (strings)."""

    kind: str
    path: str
    old: str = ""
    new: str = ""

    def describe(self, width: int | None) -> str:
        """One report line: ``Edited  path: "old" → "new"`` (values cut to ``width`` characters)."""
        head = f"{self.kind:<7} {self.path}"
        if self.kind == EDITED:
            return f"{head}: {_show(self.old, width)} → {_show(self.new, width)}"
        value = self.new if self.kind == ADDED else self.old
        return f"{head}: {_show(value, width)}" if value else head


def _show(value: str, width: int | None) -> str:
    text = json.dumps(value)
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def _join(path: str, name: str) -> str:
    if not path:
        return name
    return path + name if name.startswith("[") else f"{path}.{name}"


def _field_changes(path: str, fields: Any) -> Iterator[Change]:
    for item in fields or []:
        if item.get("Type", NONE) == NONE:
            continue  # the plan is contextual: unchanged fields of a changed object come along
        name = str(item.get("Name", ""))
        # A set diff (Datacenters, Specs, Tags...) names its fields after the set itself.
        where = path if path.rsplit(".", 1)[-1] == name else _join(path, name)
        yield Change(str(item["Type"]), where, str(item.get("Old") or ""), str(item.get("New") or ""))


def _object_changes(path: str, objects: Any) -> Iterator[Change]:
    for item in objects or []:
        if item.get("Type", NONE) == NONE:
            continue
        where = _join(path, str(item.get("Name", "")))
        yield from _field_changes(where, item.get("Fields"))
        yield from _object_changes(where, item.get("Objects"))


def _node_changes(path: str, node: Mapping[str, Any], children: str = "") -> Iterator[Change]:
    """A task group's or task's changes; a whole one added or deleted is one line."""
    kind = node.get("Type", NONE)
    if kind in (ADDED, DELETED):
        yield Change(kind, path)
        return
    if kind == NONE:
        return
    yield from _field_changes(path, node.get("Fields"))
    yield from _object_changes(path, node.get("Objects"))
    for child in (node.get(children) or []) if children else []:
        yield from _node_changes(_join(path, f"Tasks[{child.get('Name')}]"), child)


def plan_changes(diff: Mapping[str, Any] | None) -> list[Change]:
    """The changes of an edited job in Nomad's plan diff (``Diff`` of ``PUT /v1/job/:id/plan``), in Nomad's
    order: the job's fields, its objects, then each task group (its fields, objects, tasks)."""
    if not diff or diff.get("Type") != EDITED:
        return []
    changes = [*_field_changes("", diff.get("Fields")), *_object_changes("", diff.get("Objects"))]
    for group in diff.get("TaskGroups") or []:
        changes.extend(_node_changes(f"TaskGroups[{group.get('Name')}]", group, "Tasks"))
    return changes


# -- publishing -----------------------------------------------------------------------------------------


@dataclass
class Planned:
    """One job: its spec, the parsed job, Nomad's plan for it, and what publishing did."""

    spec: Spec
    job: dict[str, Any]
    variables: str
    namespace: str
    plan: dict[str, Any] = field(default_factory=dict)
    old_version: int | None = None
    registered: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def job_id(self) -> str:
        return str(self.job["ID"])

    @property
    def action(self) -> str:
        """created / changed / unchanged, as Nomad's plan diff says (``Diff.Type``)."""
        kind = str((self.plan.get("Diff") or {}).get("Type") or "")
        if kind not in ACTIONS:
            raise PublishError(f"Nomad's plan for {self.job_id!r} has a diff of type {kind or 'nothing'!r}; "
                               "expected Added, Edited or None")
        return ACTIONS[kind]

    @property
    def changes(self) -> list[Change]:
        return plan_changes(self.plan.get("Diff"))

    @property
    def modify_index(self) -> int:
        """The job's modify index the plan was made against (0: no such job), for ``EnforceIndex``."""
        return int(self.plan.get("JobModifyIndex") or 0)

    def rank(self) -> tuple[int, str]:
        """Register the steps first, the services next, the periodic job (which dispatches the steps) last."""
        if self.job.get("ParameterizedJob") is not None:
            return 0, self.job_id
        return (2 if self.job.get("Periodic") is not None else 1), self.job_id


class PublishError(CaravanError):
    """Publishing stopped; the message names every spec or job concerned, and what was registered."""


class Publisher:
    """Parses specs through Nomad, plans each job with Nomad, registers what the plans say changed."""

    def __init__(self, api: NomadAPI | None = None, retry_s: float | None = None) -> None:
        self.api = api if api is not None else NomadAPI.from_config()
        self.retry_s = float(section(publish).retry_s if retry_s is None else retry_s)

    def _retried(self, what: str, call: Callable[[], _T]) -> _T:
        """``call`` with leader elections and dropped connections waited out for ``retry_s``."""
        return self.api.retry(what, call, deadline=time.monotonic() + self.retry_s)

    def _ns(self, namespace: str) -> dict[str, str]:
        return {"namespace": namespace} if namespace else {}

    def read_job(self, job_id: str, namespace: str = "") -> dict[str, Any] | None:
        """The registered job, or None when Nomad answers 404."""
        found = self._retried(f"GET job {job_id}", lambda: self.api.read(f"job/{job_id}", self._ns(namespace)))
        return None if found is None else dict(found)

    def parse(self, spec: Spec, variables: str) -> dict[str, Any]:
        """The spec as API job JSON, rendered by Nomad (``POST /v1/jobs/parse``, canonicalized)."""
        body = {"JobHCL": spec.text, "Canonicalize": True, "Variables": variables}
        return dict(self._retried(f"parse {spec.path}", lambda: self.api.post("jobs/parse", body)))

    def plan_job(self, item: Planned) -> dict[str, Any]:
        """Nomad's plan for registering ``item.job`` (``PUT /v1/job/:id/plan`` with ``Diff``): the server runs
        its admission hooks (defaults such as node pool, host network and check names) before it diffs, so
        the diff holds real changes only. Registers nothing."""
        body = {"Job": item.job, "Diff": True}
        answer = self._retried(f"plan job {item.job_id}",
                               lambda: self.api.post(f"job/{item.job_id}/plan", body, self._ns(item.namespace)))
        return dict(answer)

    def plan(self, specs: Sequence[Spec], common: Mapping[str, Any], flags: Mapping[str, str]) -> list[Planned]:
        """Parse every spec (all or nothing), then ask Nomad for each job's plan; registers nothing."""
        planned, failures = [], []
        for spec in specs:
            try:
                variables = render_var_file(variables_for(spec, common, flags))
                job = self.parse(spec, variables)
            except (BackendRejected, ConfigurationError) as exc:
                failures.append(f"{spec.path}: {exc}")
                continue
            except BackendUnavailable as exc:
                raise PublishError(f"Nomad did not answer within {self.retry_s:g} s while parsing {spec.path}; "
                                   f"nothing was registered: {exc}") from exc
            planned.append(Planned(spec=spec, job=job, variables=variables,
                                   namespace=str(job.get("Namespace") or self.api.namespace or "")))
        if failures:
            raise PublishError(f"{len(failures)} of {len(specs)} job specs did not parse; nothing was registered:\n  "
                               + "\n  ".join(failures))
        seen: dict[tuple[str, str], Path] = {}
        for item in planned:
            key = (item.namespace, item.job_id)
            if key in seen:
                raise PublishError(f"job {item.job_id!r} is defined by both {seen[key]} and {item.spec.path}; "
                                   "nothing was registered")
            seen[key] = item.spec.path
        planned.sort(key=Planned.rank)
        for item in planned:
            try:
                item.plan = self.plan_job(item)
            except BackendRejected as exc:
                raise PublishError(f"Nomad refused the plan of {item.job_id!r} ({item.spec.path}); nothing was "
                                   f"registered: {exc}") from exc
            except BackendUnavailable as exc:
                raise PublishError(f"Nomad did not answer the plan of {item.job_id!r} within {self.retry_s:g} s; "
                                   f"nothing was registered: {exc}") from exc
            if item.action == "changed":
                current = self.read_job(item.job_id, item.namespace) or {}
                item.old_version = int(current.get("Version") or 0)
            item.notes.extend(_plan_notes(item.plan))
        return planned

    def apply(self, planned: Sequence[Planned]) -> None:
        """Register the created and changed jobs, in order, each at the modify index its plan was made
        against; stop at the first refusal."""
        done: list[str] = []
        for item in planned:
            if item.action == "unchanged":
                continue
            try:
                self.register(item)
            except (BackendRejected, BackendUnavailable) as exc:
                why = str(exc)
                if "job modify index" in why or "job already exists" in why:
                    why = (f"job {item.job_id!r} changed in Nomad after it was planned (another publish?); "
                           f"nothing of it was registered; run publish again to see the difference ({exc})")
                elif isinstance(exc, BackendUnavailable):
                    why = f"Nomad did not answer within {self.retry_s:g} s ({exc}); run publish again"
                raise PublishError(f"registering {item.job_id!r} ({item.spec.path}) failed: {why}; "
                                   f"registered before it: {', '.join(done) or 'nothing'}") from exc
            done.append(item.job_id)

    def register(self, item: Planned) -> None:
        """``POST /v1/jobs`` with ``EnforceIndex`` at the plan's ``JobModifyIndex``.

        A register that got no answer may have been applied: the job is planned again before any retry. No
        change left means it was (done); the same modify index means it was not (register again); another
        index means someone else registered meanwhile, which the retried register reports as a conflict."""
        body = {"Job": item.job, "EnforceIndex": True, "JobModifyIndex": item.modify_index,
                "Submission": {"Source": item.spec.text, "Format": "hcl2", "Variables": item.variables}}
        deadline, attempt = time.monotonic() + self.retry_s, 0
        while True:
            try:
                self.api.post("jobs", body, self._ns(item.namespace))
                item.registered = True
                return
            except BackendUnavailable:
                if time.monotonic() >= deadline:
                    raise
            again = self.plan_job(item)
            if (again.get("Diff") or {}).get("Type") == NONE:
                item.registered = True
                return
            attempt += 1
            time.sleep(backoff_delay(attempt))  # a pause between attempts; the plan above decided


def _plan_notes(plan: Mapping[str, Any]) -> Iterator[str]:
    if plan.get("Warnings"):
        yield f"Nomad warns: {str(plan['Warnings']).strip()}"
    failed = plan.get("FailedTGAllocs") or {}
    if failed:
        yield (f"Nomad's plan cannot place group {', '.join(sorted(failed))} now (FailedTGAllocs): once "
               "registered, the job waits for room or for a node that fits; nomad job plan shows why")


def _report(planned: Sequence[Planned], full_diff: bool, dry_run: bool) -> str:
    id_width = max([len(p.job_id) for p in planned] + [3])
    lines = []
    for item in planned:
        action = item.action
        if action == "created":
            version = "v0"
        elif action == "changed":
            old = item.old_version or 0
            version = f"v{old} → v{old + 1}"
        else:
            version = ""
        lines.append(f"{action:<10} {item.job_id:<{id_width}}  {version:<12} {item.spec.path}".rstrip())
        lines.extend(f"    ({note})" for note in item.notes)
        changes = item.changes
        shown = changes if full_diff else changes[:_SHORT_CHANGES]
        lines.extend(f"    {c.describe(None if full_diff else _SHORT_VALUE)}" for c in shown)
        if len(shown) < len(changes):
            lines.append(f"    … and {len(changes) - len(shown)} more (--diff shows every change)")
    counts = {a: sum(1 for p in planned if p.action == a) for a in ("created", "changed", "unchanged")}
    summary = ", ".join(f"{n} {a}" for a, n in counts.items())
    lines.append(summary + (" (dry run: nothing registered)" if dry_run else ""))
    return "\n".join(lines)


def find_specs(directory: Path, only: Sequence[str]) -> list[Spec]:
    """The specs of ``directory`` (all ``*.nomad.hcl``), or those named by ``only`` (file or job name)."""
    paths = sorted(directory.glob("*.nomad.hcl"))
    if not paths:
        raise ConfigurationError(f"no job specs (*.nomad.hcl) in {directory}")
    if only:
        names = {p.name.removesuffix(".nomad.hcl"): p for p in paths}
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ConfigurationError(f"--only {', '.join(unknown)}: no such spec in {directory} "
                                     f"(there are: {', '.join(sorted(names))})")
        paths = [names[n] for n in sorted(set(only))]
    specs, failures = [], []
    for path in paths:
        try:
            specs.append(read_spec(path))
        except JobSpecError as exc:
            failures.append(str(exc))
    if failures:
        raise PublishError(f"{len(failures)} job specs are not valid HCL; nothing was registered:\n  "
                           + "\n  ".join(failures))
    return specs


def common_variables(tag: str, namespace: str | None) -> dict[str, Any]:
    """The variables every spec gets when it declares them: [publish] variables, datacenters, namespace,
    environment (caravan.config.environment), image, release (the tag itself)."""
    cfg = section(publish)
    common: dict[str, Any] = {str(k): plain(v) for k, v in cfg.variables.items()}
    if cfg.datacenters:
        common["datacenters"] = [str(d) for d in cfg.datacenters]
    if namespace:
        common["namespace"] = namespace
    # The environment in every shared name (Vault role and paths, Consul services and keys): the one this
    # process is in, so the jobs and the caravan commands run against them agree.
    common["environment"] = environment(namespace or "")
    common["image"] = image_for(tag)
    common["release"] = tag  # for specs that report what they run (serving's /health)
    return common


def publish_command(args: argparse.Namespace) -> int:
    """``caravan publish``: see the module docstring."""
    from .executors.jobspec import jobspec_dir

    directory = Path(args.jobs_dir) if args.jobs_dir else jobspec_dir()
    specs = find_specs(directory, args.only or ())
    flags = parse_var_flags(args.var or ())
    declared = {name for spec in specs for name in spec.variables}
    unknown = sorted(set(flags) - declared)
    if unknown:
        raise ConfigurationError(f"--var {', '.join(unknown)}: no spec in {directory} declares such a variable")
    publisher = Publisher()
    common = common_variables(args.version, publisher.api.namespace)
    image = flags.get("image") or common["image"]
    print(f"publishing {len(specs)} job specs from {directory} with image {image} to Nomad {publisher.api.address}"
          + (f" (namespace {publisher.api.namespace})" if publisher.api.namespace else ""))
    planned = publisher.plan(specs, common, flags)
    if not args.dry_run:
        publisher.apply(planned)
    print(_report(planned, full_diff=args.diff, dry_run=args.dry_run))
    return 0
