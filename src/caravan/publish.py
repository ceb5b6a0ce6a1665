"""``caravan publish``: release the Nomad jobs with a new image, registering only what changed.

Publishing renders every ``nomad/*.nomad.hcl`` through Nomad itself (``POST /v1/jobs/parse`` with a
var-file): the image ``<repository>:<tag>``, the namespace, the datacenters and ``--var`` overrides, each
sent only to the specs that declare that variable. Nothing is registered unless every spec parses. Each
parsed job is then compared with the one Nomad holds, leaving out what the server manages (status,
indexes, version, submit time) and the defaults it fills in where the spec says nothing; only created
and changed jobs are registered, with ``EnforceIndex`` at the ``JobModifyIndex`` that was read, so that
a concurrent publish fails loudly instead of being overwritten.

``caravan trigger retrain`` (caravan.trigger) reuses :class:`Publisher`'s connection and job reads.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import luigi

from .config import section, setting
from .errors import BackendRejected, CaravanError, ConfigurationError, JobSpecError
from .executors.jobspec import labelled_blocks, plain_hcl


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


#: Fields of a registered job that Nomad manages: never a reason to register again.
SERVER_MANAGED = frozenset({"Status", "StatusDescription", "Stable", "Version", "SubmitTime", "CreateIndex",
                            "ModifyIndex", "JobModifyIndex", "NomadTokenID", "VaultToken", "ConsulToken"})
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


# -- comparing jobs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One field that differs: its path in the job (``TaskGroups[g].Tasks[t].Config.image``), old and new."""

    path: str
    old: Any
    new: Any

    def describe(self, width: int | None) -> str:
        return f"{self.path}: {_show(self.old, width)} → {_show(self.new, width)}"


def _show(value: Any, width: int | None) -> str:
    text = "(none)" if value is None else json.dumps(value, sort_keys=True, default=str)
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def _blank(value: Any) -> bool:
    """None, false, zero, "" and empty collections: what Go's encoding/json calls a zero value."""
    if value is None or isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value == 0
    return isinstance(value, str | list | dict) and not value


def _names(items: list[Any]) -> list[str] | None:
    names = [i.get("Name") or i.get("Label") if isinstance(i, dict) else None for i in items]
    if all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names):
        return [str(n) for n in names]
    return None


def _diff(path: str, old: Any, new: Any) -> Iterator[Change]:
    if new is None or (_blank(new) and _blank(old)):
        return  # the spec leaves it to the server's default, or both say "nothing"
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(new):
            yield from _diff(f"{path}.{key}" if path else key, old.get(key), new[key])
        return
    if isinstance(old, list) and isinstance(new, list):
        old_names, new_names = _names(old), _names(new)
        if old_names is not None and new_names is not None:
            before = dict(zip(old_names, old, strict=True))
            for name, item in zip(new_names, new, strict=True):
                yield from _diff(f"{path}[{name}]", before.get(name), item)
            yield from (Change(f"{path}[{name}]", before[name], None) for name in old_names if name not in new_names)
            return
        if len(old) == len(new):
            for index, (left, right) in enumerate(zip(old, new, strict=True)):
                yield from _diff(f"{path}[{index}]", left, right)
            return
    if old != new:
        yield Change(path, old, new)


def diff_jobs(registered: Mapping[str, Any], parsed: Mapping[str, Any]) -> list[Change]:
    """What registering ``parsed`` would change in ``registered``, field by field.

    Left out: :data:`SERVER_MANAGED` fields, fields the parsed job leaves unset (null: the server fills its
    default, e.g. implied constraints and identities) and empty values on both sides. The server keeps only
    ``Stagger`` and ``MaxParallel`` of a job-level ``update`` block (the rest lives in each group's), so only
    those are compared there. Not seen as a consequence: removing a whole block whose parsed value is then
    null (all of a job's ``meta`` or ``constraint`` blocks, say); such a spec is reported unchanged.
    """
    old = {k: v for k, v in registered.items() if k not in SERVER_MANAGED}
    new = {k: v for k, v in parsed.items() if k not in SERVER_MANAGED}
    if isinstance(new.get("Update"), dict):
        new["Update"] = {k: v for k, v in new["Update"].items() if k in ("Stagger", "MaxParallel")}
    return list(_diff("", old, new))


# -- publishing -----------------------------------------------------------------------------------------


@dataclass
class Planned:
    """One job: the spec, the parsed job, what Nomad holds now, and the outcome."""

    spec: Spec
    job: dict[str, Any]
    variables: str
    namespace: str
    registered: dict[str, Any] | None = None
    changes: list[Change] = field(default_factory=list)
    new_version: int | None = None
    note: str = ""

    @property
    def job_id(self) -> str:
        return str(self.job["ID"])

    @property
    def action(self) -> str:
        if self.registered is None:
            return "created"
        return "changed" if self.changes and self.new_version != self.old_version else "unchanged"

    @property
    def old_version(self) -> int | None:
        return None if self.registered is None else int(self.registered.get("Version") or 0)

    def rank(self) -> tuple[int, str]:
        """Register the steps first, the services next, the periodic job (which dispatches the steps) last."""
        if self.job.get("ParameterizedJob") is not None:
            return 0, self.job_id
        return (2 if self.job.get("Periodic") is not None else 1), self.job_id


class PublishError(CaravanError):
    """Publishing stopped; the message names every spec or job concerned, and what was registered."""


class Publisher:
    """Parses specs through Nomad, compares, registers; the client comes from the Nomad executor's settings."""

    def __init__(self, executor: Any = None) -> None:
        from .executors.nomad import NomadExecutor

        self.nomad = executor if executor is not None else NomadExecutor()
        self.client = self.nomad.client

    def _ns(self, namespace: str) -> dict[str, str]:
        return {"namespace": namespace} if namespace else {}

    def read_job(self, job_id: str, namespace: str = "") -> dict[str, Any] | None:
        """The registered job, or None when Nomad answers 404."""
        from nomad.api import exceptions as nx

        def read() -> dict[str, Any] | None:
            try:
                response = self.client.job.request(job_id, method="get", params=self._ns(namespace),
                                                   timeout=self.nomad.timeout_s)
            except nx.URLNotFoundNomadException:
                return None
            return dict(response.json())

        result: dict[str, Any] | None = self.nomad._call(f"GET /v1/job/{job_id}", read)
        return result

    def parse(self, spec: Spec, variables: str) -> dict[str, Any]:
        body = {"JobHCL": spec.text, "Canonicalize": True, "Variables": variables}
        response = self.nomad._call("POST /v1/jobs/parse", self.client.jobs.request, "parse", method="post",
                                    json=body, timeout=self.nomad.timeout_s)
        return dict(response.json())

    def plan(self, specs: Sequence[Spec], common: Mapping[str, Any], flags: Mapping[str, str]) -> list[Planned]:
        """Parse every spec (all or nothing) and compare each job with Nomad's; registers nothing."""
        planned, failures = [], []
        for spec in specs:
            try:
                variables = render_var_file(variables_for(spec, common, flags))
                job = self.parse(spec, variables)
            except (BackendRejected, ConfigurationError) as exc:
                failures.append(f"{spec.path}: {exc}")
                continue
            planned.append(Planned(spec=spec, job=job, variables=variables,
                                   namespace=str(job.get("Namespace") or self.nomad.namespace or "")))
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
            item.registered = self.read_job(item.job_id, item.namespace)
            if item.registered is not None:
                item.changes = diff_jobs(item.registered, item.job)
        return planned

    def apply(self, planned: Sequence[Planned]) -> None:
        """Register the created and changed jobs, in order; stop at the first refusal."""
        done: list[str] = []
        for item in planned:
            if item.action == "unchanged":
                continue
            index = 0 if item.registered is None else int(item.registered.get("JobModifyIndex") or 0)
            body = {"Job": item.job, "EnforceIndex": True, "JobModifyIndex": index,
                    "Submission": {"Source": item.spec.text, "Format": "hcl2", "Variables": item.variables}}
            try:
                self.nomad._call(f"POST /v1/jobs ({item.job_id})", self.client.jobs.request, method="post",
                                 params=self._ns(item.namespace), json=body, timeout=self.nomad.timeout_s)
            except BackendRejected as exc:
                why = str(exc)
                if "job modify index" in why:
                    why = (f"job {item.job_id!r} changed in Nomad after it was read (another publish?); "
                           f"run publish again to see the difference ({exc})")
                raise PublishError(f"registering {item.job_id!r} ({item.spec.path}) failed: {why}; "
                                   f"registered before it: {', '.join(done) or 'nothing'}") from exc
            done.append(item.job_id)
            now = self.read_job(item.job_id, item.namespace) or {}
            item.new_version = int(now.get("Version") or 0)
            if item.registered is not None and item.new_version == item.old_version:
                item.note = "re-registered; Nomad found no change in the spec"


def _report(planned: Sequence[Planned], full_diff: bool, dry_run: bool) -> str:
    id_width = max([len(p.job_id) for p in planned] + [3])
    lines = []
    for item in planned:
        action = item.action
        if action == "created":
            version = f"v{item.new_version or 0}"
        elif action == "changed":
            new = item.new_version if item.new_version is not None else (item.old_version or 0) + 1
            version = f"v{item.old_version} → v{new}"
        else:
            version = f"v{item.old_version}"
        note = f"  ({item.note})" if item.note else ""
        lines.append(f"{action:<10} {item.job_id:<{id_width}}  {version:<12} {item.spec.path}{note}")
        if action == "changed" or (full_diff and item.changes):
            shown = item.changes if full_diff else item.changes[:_SHORT_CHANGES]
            lines.extend(f"    {c.describe(None if full_diff else _SHORT_VALUE)}" for c in shown)
            if len(shown) < len(item.changes):
                lines.append(f"    … and {len(item.changes) - len(shown)} more (--diff shows every change)")
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
    """The variables every spec gets when it declares them: [publish] variables, datacenters, namespace, image,
    release (the tag itself)."""
    cfg = section(publish)
    common: dict[str, Any] = {str(k): _plain(v) for k, v in cfg.variables.items()}
    if cfg.datacenters:
        common["datacenters"] = [str(d) for d in cfg.datacenters]
    if namespace:
        common["namespace"] = namespace
    common["image"] = image_for(tag)
    common["release"] = tag  # for specs that report what they run (serving's /health)
    return common


def _plain(value: Any) -> Any:
    """luigi's frozen JSON values (tuples, FrozenOrderedDict) as lists and dicts."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


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
    common = common_variables(args.version, publisher.nomad.namespace)
    image = flags.get("image") or common["image"]
    print(f"publishing {len(specs)} job specs from {directory} with image {image} to Nomad {publisher.nomad.address}"
          + (f" (namespace {publisher.nomad.namespace})" if publisher.nomad.namespace else ""))
    planned = publisher.plan(specs, common, flags)
    if not args.dry_run:
        publisher.apply(planned)
    print(_report(planned, full_diff=args.diff, dry_run=args.dry_run))
    return 0
