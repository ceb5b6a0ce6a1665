"""Nomad's job plan diff, for the double's ``PUT /v1/job/:id/plan`` (``nomad/structs/diff.go``,
``helper/flatmap/flatmap.go``, ``scheduler/annotate.go``, ``nomad/job_endpoint.go`` ``Plan``).

Nomad diffs ``structs.Job`` values; the double holds API JSON after the same admission defaults, so the
JSON dicts stand in for the structs. What carries over from ``diff.go``:

- A node's own primitive fields are flattened (``flatmap.Flatten(obj, filter, primitiveOnly=true)``): strings,
  numbers and bools by name, string maps (``Meta``, ``Env``) as ``Meta[key]``; nested structs and slices are
  left to their own object diffs. Values are Go's ``%v`` text, so every ``Old``/``New`` is a string.
- ``fieldDiff``: equal values give no field (or a ``None`` one when contextual); ``""`` on the old side is
  ``Added``, on the new side ``Deleted``, otherwise ``Edited``. Fields sort by name, old, new.
- Plan asks for a contextual diff (``existingJob.Diff(args.Job, true)``): an object that changed lists its
  unchanged fields too, as ``None``. The job's, groups' and tasks' own fields are never contextual.
- Sets (``Datacenters``, ``Periodic.Specs``, ``Tags``...) give one ``Added``/``Deleted`` field per member,
  named after the set; never ``Edited``. Task groups and tasks match by name, templates by destination,
  service checks by name, ports by label, services by a name/port/position score, constraints by their
  text; networks by content (so a changed network is one deleted and one added).
- The job's ``Type`` is ``Edited`` when any field, object or group changed; a group or task is ``Edited``
  when anything in it differs (``reflect.DeepEqual``), even a field no diff shows.

Only the blocks the project's specs use (and a few neighbours) are diffed; ``Update`` at job level is left
out as Nomad does (it lives in each group's).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

ADDED, DELETED, EDITED, NONE = "Added", "Deleted", "Edited", "None"
# diff.go DiffType.Less: a reverse sort, Edited before Added before Deleted before None.
_TYPE_ORDER = {EDITED: 0, ADDED: 1, DELETED: 2, NONE: 3}
# Job.Diff's filter: fields the server manages (and Update, which Nomad keeps per group).
JOB_FILTER = frozenset({"ID", "Status", "StatusDescription", "Version", "Stable", "CreateIndex", "ModifyIndex",
                        "JobModifyIndex", "Update", "SubmitTime", "NomadTokenID", "VaultToken"})
# Fields of the structs that are Go maps of strings: Flatten walks into them even for primitives only.
_STRING_MAPS = frozenset({"Meta", "Env", "CanaryMeta", "TaggedAddresses"})
ZERO_TIME = "0001-01-01T00:00:00Z"

Obj = Mapping[str, Any]


# -- flatmap ----------------------------------------------------------------------------------------------

def go_value(value: Any) -> str:
    """A scalar as Go's ``fmt.Sprintf("%v", v)`` writes it (JSON numbers decode to float64 in Go)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "+Inf" if value > 0 else ("-Inf" if value < 0 else "NaN")
        if value == int(value) and abs(value) < 1e21:
            return str(int(value))  # %v uses plain digits for exponents in [-4, 21)
        text = repr(value)
        if "e" in text:
            mantissa, exponent = text.split("e")
            sign = "-" if exponent.startswith("-") else "+"
            return f"{mantissa}e{sign}{abs(int(exponent)):02d}"
        return text
    return str(value)


def primitives(obj: Obj | None, exclude: Iterable[str] = ()) -> dict[str, str]:
    """``flatmap.Flatten(obj, exclude, true)``: the object's own scalars and string maps, as strings."""
    flat: dict[str, str] = {}
    for key, value in (obj or {}).items():
        if value is None or isinstance(value, list):
            continue  # nil pointers and slices: not primitive
        if isinstance(value, dict):
            if key in _STRING_MAPS:
                flat.update({f"{key}[{k}]": go_value(v) for k, v in value.items()
                             if v is not None and not isinstance(v, dict | list)})
            continue  # a nested struct: its own object diff, if any
        flat[key] = go_value(value)
    for key in exclude:
        flat.pop(key, None)
    return flat


def flatten_all(value: Any, prefix: str = "") -> dict[str, str]:
    """``flatmap.Flatten(v, nil, false)``: everything, lists as ``name[0]``, maps as ``name[key]``."""
    flat: dict[str, str] = {}
    if isinstance(value, dict):
        for key, inner in value.items():
            flat.update(flatten_all(inner, f"{prefix}[{key}]" if prefix else str(key)))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            flat.update(flatten_all(inner, f"{prefix}[{index}]"))
    else:
        flat[prefix] = "nil" if value is None else go_value(value)
    return flat


# -- fields and sets --------------------------------------------------------------------------------------

def field_diff(old: str, new: str, name: str, contextual: bool) -> dict[str, Any] | None:
    """diff.go ``fieldDiff``."""
    if old == new:
        return _field(NONE, name, old, new) if contextual else None
    if old == "":
        return _field(ADDED, name, "", new)
    if new == "":
        return _field(DELETED, name, old, "")
    return _field(EDITED, name, old, new)


def _field(kind: str, name: str, old: str, new: str) -> dict[str, Any]:
    return {"Type": kind, "Name": name, "Old": old, "New": new, "Annotations": None}


def field_diffs(old: Mapping[str, str] | None, new: Mapping[str, str] | None,
                contextual: bool) -> list[dict[str, Any]]:
    """diff.go ``fieldDiffs``: one per key of either side, sorted by name, old, new."""
    old, new = old or {}, new or {}
    found = [field_diff(old.get(k, ""), new.get(k, ""), k, contextual) for k in set(old) | set(new)]
    return sorted((f for f in found if f is not None), key=lambda f: (f["Name"], f["Old"], f["New"]))


def string_set_diff(old: list[str] | None, new: list[str] | None, name: str,
                    contextual: bool) -> dict[str, Any] | None:
    """diff.go ``stringSetDiff``: members removed and added; ``None`` type for an unchanged set in context."""
    before, after = set(old or []), set(new or [])
    if before == after and not contextual:
        return None
    fields = [field_diff(k, "", name, contextual) for k in before - after]
    if contextual:
        fields += [field_diff(k, k, name, contextual) for k in before & after]
    fields += [field_diff("", k, name, contextual) for k in after - before]
    ordered = sorted((f for f in fields if f is not None), key=lambda f: (f["Name"], f["Old"], f["New"]))
    added, removed = bool(after - before), bool(before - after)
    if added and removed:
        kind = EDITED
    elif added or removed:
        kind = ADDED if added else DELETED
    elif not ordered:
        return None
    else:
        kind = NONE
    return _object(kind, name, ordered, [])


# -- objects ----------------------------------------------------------------------------------------------

def _object(kind: str, name: str, fields: list[dict[str, Any]], objects: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Type": kind, "Name": name, "Fields": fields or None, "Objects": objects or None}


def sort_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """diff.go ``ObjectDiff.Less``: by name, type, number of fields and objects, then content."""
    return sorted(objects, key=lambda o: (o["Name"], _TYPE_ORDER[o["Type"]], len(o["Fields"] or []),
                                          len(o["Objects"] or []), json.dumps(o, sort_keys=True)))


def primitive_object_diff(old: Obj | None, new: Obj | None, exclude: Iterable[str], name: str,
                          contextual: bool) -> dict[str, Any] | None:
    """diff.go ``primitiveObjectDiff``: the type follows from the fields; no changed field, no diff."""
    exclude = tuple(exclude)
    fields = field_diffs(primitives(old, exclude), primitives(new, exclude), contextual)
    kinds = {f["Type"] for f in fields}
    if EDITED in kinds or {ADDED, DELETED} <= kinds:
        kind = EDITED
    elif ADDED in kinds or DELETED in kinds:
        kind = ADDED if ADDED in kinds else DELETED
    else:
        return None
    return _object(kind, name, fields, [])


def primitive_object_set_diff(old: list[Obj] | None, new: list[Obj] | None, name: str,
                              key: Callable[[Obj], str], contextual: bool) -> list[dict[str, Any]]:
    """diff.go ``primitiveObjectSetDiff``: members keyed by ``DiffID`` (else their hash)."""
    before = {key(o): o for o in old or []}
    after = {key(o): o for o in new or []}
    found = [primitive_object_diff(before[k], after.get(k), (), name, contextual) for k in before]
    found += [primitive_object_diff(None, after[k], (), name, contextual) for k in after if k not in before]
    return sort_objects([d for d in found if d is not None])


def _content_key(obj: Obj) -> str:
    return json.dumps(obj, sort_keys=True)


def _constraint_key(obj: Obj) -> str:
    # structs.Constraint.DiffID is its String(): "LTarget Operand RTarget".
    return f"{obj.get('LTarget', '')} {obj.get('Operand', '')} {obj.get('RTarget', '')}"


def struct_diff(old: Obj | None, new: Obj | None, name: str, contextual: bool,
                nested: Callable[[Obj, Obj], list[dict[str, Any]]] | None = None,
                exclude: Iterable[str] = ()) -> dict[str, Any] | None:
    """The shape most of diff.go's object diffs share (``serviceDiff``, ``vaultDiff``, ``templateDiff``,
    ``Resources.Diff``...): nothing when deeply equal, else Added/Deleted/Edited by which side is missing,
    contextual primitive fields, then the nested objects against an empty value for the missing side."""
    if old == new:
        return None
    kind = ADDED if old is None else DELETED if new is None else EDITED
    exclude = tuple(exclude)
    fields = field_diffs(primitives(old, exclude) if old is not None else None,
                         primitives(new, exclude) if new is not None else None, contextual)
    objects = nested(old or {}, new or {}) if nested else []
    return _object(kind, name, fields, objects)


def config_diff(old: Obj | None, new: Obj | None, contextual: bool) -> dict[str, Any] | None:
    """diff.go ``configDiff``: a task's driver config, flattened whole (``args[0]``, ``labels[k]``)."""
    if (old or {}) == (new or {}):
        return None
    kind = ADDED if not old else DELETED if not new else EDITED
    return _object(kind, "Config", field_diffs(flatten_all(old or {}), flatten_all(new or {}), contextual), [])


def _by_name(items: list[Obj] | None, key: str = "Name") -> dict[str, Obj]:
    return {str(item.get(key) or ""): item for item in items or []}


def _matched(old: list[Obj] | None, new: list[Obj] | None,
             diff: Callable[[Obj | None, Obj | None], dict[str, Any] | None],
             match: Callable[[Obj, int, list[Obj], list[int]], int]) -> list[dict[str, Any]]:
    """diff.go's list matching (``serviceDiffs``, ``templateDiffs``): trivial when one each, else each old item
    finds its match among the unmatched new ones; unmatched old ones are deleted, new ones added."""
    old, new = list(old or []), list(new or [])
    if len(old) == 1 and len(new) == 1:
        one = diff(old[0], new[0])
        return [one] if one else []
    new_matches = [-1] * len(new)
    found = []
    for index, item in enumerate(old):
        at = match(item, index, new, new_matches)
        if at < 0:
            found.append(diff(item, None))
            continue
        new_matches[at] = index
        found.append(diff(item, new[at]))
    found += [diff(None, new[i]) for i, m in enumerate(new_matches) if m == -1]
    return sort_objects([d for d in found if d is not None])


def _service_match(service: Obj, index: int, services: list[Obj], matches: list[int]) -> int:
    # diff.go findServiceMatch: same position 1, same port label 2, same name 3; more than 2 to match.
    best, at = 0, -1
    for i, other in enumerate(services):
        if matches[i] >= 0:
            continue
        score = (1 if i == index else 0) + (2 if service.get("PortLabel") == other.get("PortLabel") else 0) \
            + (3 if service.get("Name") == other.get("Name") else 0)
        if score > 2 and score > best:
            best, at = score, i
    return at


def _template_match(template: Obj, _index: int, templates: list[Obj], matches: list[int]) -> int:
    # structs.Template.DiffID is its DestPath; the first unmatched one with the same wins.
    return next((i for i, other in enumerate(templates)
                 if matches[i] < 0 and other.get("DestPath") == template.get("DestPath")), -1)


def check_diffs(old: list[Obj] | None, new: list[Obj] | None, contextual: bool) -> list[dict[str, Any]]:
    """diff.go ``serviceCheckDiffs``: checks match by name (which admission always fills in)."""
    before, after = _by_name(old), _by_name(new)
    found = [struct_diff(before[k], after.get(k), "Check", contextual) for k in before]
    found += [struct_diff(None, after[k], "Check", contextual) for k in after if k not in before]
    return sort_objects([d for d in found if d is not None])


def service_diffs(old: list[Obj] | None, new: list[Obj] | None, contextual: bool) -> list[dict[str, Any]]:
    """diff.go ``serviceDiffs`` / ``serviceDiff``."""
    def nested(o: Obj, n: Obj) -> list[dict[str, Any]]:
        sets = [string_set_diff(o.get("CanaryTags"), n.get("CanaryTags"), "CanaryTags", contextual),
                string_set_diff(o.get("Tags"), n.get("Tags"), "Tags", contextual)]
        return [s for s in sets if s is not None] + check_diffs(o.get("Checks"), n.get("Checks"), contextual)

    return _matched(old, new, lambda o, n: struct_diff(o, n, "Service", contextual, nested), _service_match)


def network_diffs(old: list[Obj] | None, new: list[Obj] | None, contextual: bool) -> list[dict[str, Any]]:
    """diff.go ``networkResourceDiffs``: networks keyed by content, so never Edited, only Added/Deleted."""
    before = {_content_key(n): n for n in old or []}
    after = {_content_key(n): n for n in new or []}
    found = [network_diff(v, None, contextual) for k, v in before.items() if k not in after]
    found += [network_diff(None, v, contextual) for k, v in after.items() if k not in before]
    return sort_objects([d for d in found if d is not None])


def network_diff(old: Obj | None, new: Obj | None, contextual: bool) -> dict[str, Any] | None:
    """diff.go ``NetworkResource.Diff``: mode and hostname, then static and dynamic ports by label."""
    def nested(o: Obj, n: Obj) -> list[dict[str, Any]]:
        return (port_diffs(o.get("ReservedPorts"), n.get("ReservedPorts"), False, contextual)
                + port_diffs(o.get("DynamicPorts"), n.get("DynamicPorts"), True, contextual))

    return struct_diff(old, new, "Network", contextual, nested, exclude=("Device", "CIDR", "IP", "MBits"))


def port_diffs(old: list[Obj] | None, new: list[Obj] | None, dynamic: bool,
               contextual: bool) -> list[dict[str, Any]]:
    """diff.go ``portDiffs``: a dynamic port's value is the scheduler's, not the spec's."""
    name, exclude = ("Dynamic Port", ("Value", "IgnoreCollision")) if dynamic else ("Static Port", ())
    before, after = _by_name(old, "Label"), _by_name(new, "Label")
    found = [primitive_object_diff(before[k], after.get(k), exclude, name, contextual) for k in before]
    found += [primitive_object_diff(None, after[k], exclude, name, contextual) for k in after if k not in before]
    return sort_objects([d for d in found if d is not None])


# -- tasks, groups, jobs ------------------------------------------------------------------------------------

def task_diff(old: Obj | None, new: Obj | None) -> dict[str, Any]:
    """diff.go ``Task.Diff`` (contextual, as Plan asks)."""
    kind = ADDED if old is None else DELETED if new is None else (EDITED if old != new else NONE)
    o, n = old or {}, new or {}
    fields = field_diffs(primitives(old, ("Name",)) if old is not None else None,
                         primitives(new, ("Name",)) if new is not None else None, False)
    objects: list[dict[str, Any]] = []
    objects += primitive_object_set_diff(o.get("Constraints"), n.get("Constraints"), "Constraint",
                                         _constraint_key, True)
    objects += primitive_object_set_diff(o.get("Affinities"), n.get("Affinities"), "Affinity", _constraint_key, True)
    objects += [d for d in [config_diff(o.get("Config"), n.get("Config"), True)] if d]
    resources = struct_diff(o.get("Resources"), n.get("Resources"), "Resources", True,
                            lambda a, b: network_diffs(a.get("Networks"), b.get("Networks"), True))
    objects += [resources] if resources else []
    for name in ("LogConfig", "DispatchPayload", "Consul"):
        found = primitive_object_diff(o.get(name), n.get(name), (), name, True)
        objects += [found] if found else []
    objects += primitive_object_set_diff(o.get("Artifacts"), n.get("Artifacts"), "Artifact", _content_key, True)
    objects += service_diffs(o.get("Services"), n.get("Services"), True)
    vault = struct_diff(o.get("Vault"), n.get("Vault"), "Vault", True)
    objects += [vault] if vault else []
    objects += _matched(o.get("Templates"), n.get("Templates"),
                        lambda a, b: struct_diff(a, b, "Template", True), _template_match)
    return {"Type": kind, "Name": (new or old or {}).get("Name", ""), "Fields": fields or None,
            "Objects": objects or None, "Annotations": None}


def group_diff(old: Obj | None, new: Obj | None) -> dict[str, Any]:
    """diff.go ``TaskGroup.Diff`` (contextual, as Plan asks)."""
    kind = ADDED if old is None else DELETED if new is None else (EDITED if old != new else NONE)
    o, n = old or {}, new or {}
    before = primitives(old, ("Name",)) if old is not None else None
    after = primitives(new, ("Name",)) if new is not None else None
    if before is not None and after is not None:  # ShutdownDelay is a pointer: diffed only between two groups
        before["ShutdownDelay"] = "" if o.get("ShutdownDelay") is None else go_value(o["ShutdownDelay"])
        after["ShutdownDelay"] = "" if n.get("ShutdownDelay") is None else go_value(n["ShutdownDelay"])
    fields = field_diffs(before, after, False)
    objects: list[dict[str, Any]] = []
    objects += primitive_object_set_diff(o.get("Constraints"), n.get("Constraints"), "Constraint",
                                         _constraint_key, True)
    objects += primitive_object_set_diff(o.get("Affinities"), n.get("Affinities"), "Affinity", _constraint_key, True)
    for name, exclude in (("RestartPolicy", ()), ("Migrate", ()), ("ReschedulePolicy", ()), ("EphemeralDisk", ()),
                          ("Consul", ()), ("Update", ("Stagger",))):
        found = primitive_object_diff(o.get(name), n.get(name), exclude, name, True)
        objects += [found] if found else []
    objects += network_diffs(o.get("Networks"), n.get("Networks"), True)
    objects += service_diffs(o.get("Services"), n.get("Services"), True)
    tasks = _named_diffs(o.get("Tasks"), n.get("Tasks"), task_diff)
    return {"Type": kind, "Name": (new or old or {}).get("Name", ""), "Fields": fields or None,
            "Objects": objects or None, "Tasks": tasks or None, "Updates": None}


def _named_diffs(old: list[Obj] | None, new: list[Obj] | None,
                 diff: Callable[[Obj | None, Obj | None], dict[str, Any]]) -> list[dict[str, Any]]:
    before, after = _by_name(old), _by_name(new)
    found = [diff(before[k], after.get(k)) for k in before]
    found += [diff(None, after[k]) for k in after if k not in before]
    return sorted(found, key=lambda d: d["Name"])


def job_diff(old: Obj | None, new: Obj | None) -> dict[str, Any]:
    """diff.go ``Job.Diff(other, contextual=true)``: what registering ``new`` over ``old`` changes."""
    kind = ADDED if old is None else DELETED if new is None else NONE
    o, n = old or {}, new or {}
    fields = field_diffs(primitives(old, JOB_FILTER) if old is not None else None,
                         primitives(new, JOB_FILTER) if new is not None else None, False)
    objects: list[dict[str, Any]] = []
    datacenters = string_set_diff(o.get("Datacenters"), n.get("Datacenters"), "Datacenters", True)
    if datacenters is not None and datacenters["Type"] != NONE:
        objects.append(datacenters)
    objects += primitive_object_set_diff(o.get("Constraints"), n.get("Constraints"), "Constraint",
                                         _constraint_key, True)
    objects += primitive_object_set_diff(o.get("Affinities"), n.get("Affinities"), "Affinity", _constraint_key, True)

    def periodic_specs(a: Obj, b: Obj) -> list[dict[str, Any]]:
        specs = string_set_diff(a.get("Specs"), b.get("Specs"), "Specs", True)
        return [specs] if specs is not None and specs["Type"] != NONE else []

    def meta_keys(a: Obj, b: Obj) -> list[dict[str, Any]]:
        sets = [string_set_diff(a.get("MetaOptional"), b.get("MetaOptional"), "MetaOptional", True),
                string_set_diff(a.get("MetaRequired"), b.get("MetaRequired"), "MetaRequired", True)]
        return [s for s in sets if s is not None]

    groups = _named_diffs(o.get("TaskGroups"), n.get("TaskGroups"), group_diff)
    periodic = struct_diff(o.get("Periodic"), n.get("Periodic"), "Periodic", True, periodic_specs)
    objects += [periodic] if periodic else []
    parameterized = struct_diff(o.get("ParameterizedJob"), n.get("ParameterizedJob"), "ParameterizedJob", True,
                                meta_keys)
    objects += [parameterized] if parameterized else []
    if kind == NONE and any(x["Type"] != NONE for x in (*fields, *objects, *groups)):
        kind = EDITED
    return {"Type": kind, "ID": n.get("ID") or o.get("ID") or "", "Fields": fields or None,
            "Objects": objects or None, "TaskGroups": groups or None}


# -- scheduler annotations -----------------------------------------------------------------------------------

def desired_updates(old: Obj | None, new: Obj, diff: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """``PlanAnnotations.DesiredTGUpdates``, as the reconciler would count them for a job whose every wanted
    allocation is running: kept ones are ignored, a changed task replaces (destructive) or updates in place."""
    groups = {g["Name"]: g for g in diff.get("TaskGroups") or []}
    before = _by_name((old or {}).get("TaskGroups"))
    updates: dict[str, dict[str, int]] = {}
    for group in new.get("TaskGroups") or []:
        name = str(group.get("Name"))
        count = int(group.get("Count") or 0)
        was = int(before[name].get("Count") or 0) if name in before else 0
        counts = dict.fromkeys(("Ignore", "Place", "Migrate", "Stop", "InPlaceUpdate", "DestructiveUpdate",
                                "Canary", "Preemptions", "Disconnect", "Reconnect", "RescheduleNow",
                                "RescheduleLater"), 0)
        kept = min(count, was)
        tasks = [t for t in groups.get(name, {}).get("Tasks") or [] if t["Type"] != NONE]
        if tasks and _destructive(groups[name]):
            counts["DestructiveUpdate"] = kept
        elif tasks:
            counts["InPlaceUpdate"] = kept
        else:
            counts["Ignore"] = kept
        counts["Place"], counts["Stop"] = max(0, count - was), max(0, was - count)
        updates[name] = counts
    for name, group in before.items():
        if name not in updates:
            updates[name] = {**dict.fromkeys(("Ignore", "Place", "Migrate", "InPlaceUpdate", "DestructiveUpdate",
                                              "Canary", "Preemptions", "Disconnect", "Reconnect", "RescheduleNow",
                                              "RescheduleLater"), 0), "Stop": int(group.get("Count") or 0)}
    return updates


_IN_PLACE_OBJECTS = frozenset({"Service", "Constraint", "Affinity", "Spread"})


def _task_annotation(task: Mapping[str, Any], group: Mapping[str, Any]) -> str | None:
    """scheduler/annotate.go ``annotateTask``."""
    if task["Type"] == NONE:
        return None
    if group["Type"] in (ADDED, DELETED) and task["Type"] in (ADDED, DELETED):
        return "forces create" if task["Type"] == ADDED else "forces destroy"
    destructive = any(f["Name"] != "KillTimeout" for f in task["Fields"] or [])
    for obj in [] if destructive else task["Objects"] or []:
        if obj["Name"] in _IN_PLACE_OBJECTS:
            continue
        if obj["Name"] == "LogConfig" and not any(f["Name"] == "Disabled" for f in obj["Fields"] or []):
            continue
        destructive = True
        break
    return "forces create/destroy update" if destructive else "forces in-place update"


def _destructive(group: Mapping[str, Any]) -> bool:
    return any(_task_annotation(t, group) == "forces create/destroy update" for t in group.get("Tasks") or [])


def annotate(diff: dict[str, Any], updates: Mapping[str, Mapping[str, int]]) -> None:
    """scheduler/annotate.go ``Annotate``: update counts on groups, count changes, task annotations."""
    names = {"Ignore": "ignore", "Place": "create", "Migrate": "migrate", "Stop": "destroy", "Canary": "canary",
             "InPlaceUpdate": "in-place update", "DestructiveUpdate": "create/destroy update"}
    for group in diff.get("TaskGroups") or []:
        counts = updates.get(group["Name"])
        if counts is not None:
            group["Updates"] = {label: counts[key] for key, label in names.items() if counts.get(key)}
        for field in group["Fields"] or []:
            if field["Name"] == "Count":
                old, new = int(field["Old"] or 0), int(field["New"] or 0)
                if old != new:
                    field["Annotations"] = ["forces create" if old < new else "forces destroy"]
        for task in group["Tasks"] or []:
            note = _task_annotation(task, group)
            if note:
                task["Annotations"] = [note]


def plan_reply(old: Obj | None, new: Obj, *, with_diff: bool, failed: Mapping[str, Any] | None = None,
               warnings: str = "") -> dict[str, Any]:
    """The body of ``PUT /v1/job/:id/plan`` (``structs.JobPlanResponse``): ``JobModifyIndex`` and ``Index`` are
    the stored job's modify index (0 for a new job), the value a following register enforces."""
    index = int((old or {}).get("JobModifyIndex") or 0)
    diff = job_diff(old, new)
    updates = desired_updates(old, new, diff)
    annotate(diff, updates)
    return {"Annotations": {"DesiredTGUpdates": updates, "PreemptedAllocs": None},
            "FailedTGAllocs": dict(failed) if failed else None, "JobModifyIndex": index, "CreatedEvals": None,
            "Diff": diff if with_diff else None, "NextPeriodicLaunch": ZERO_TIME, "Warnings": warnings,
            "Index": index}


class PlanEndpoint:
    """``PUT|POST /v1/job/:id/plan`` (a mixin of the double): ``command/agent/job_endpoint.go`` ``jobPlan``
    then ``nomad/job_endpoint.go`` ``Plan``: admission (the stored form's defaults) and validation as for a
    register, the diff against the stored job, nothing written.

    ``FailedTGAllocs``: for a batch job that is not a parent (parameterized or periodic), one allocation of
    each group the plan would place is tried on the double's nodes as the scheduler would (``nodes.py``
    ``select_node``); a group nothing fits gets that ``AllocMetric``, ``CoalescedFailures`` for the rest.
    Parents and service jobs (which this batch-only client never places) get none. The update counts assume
    every wanted allocation of the stored job runs."""

    def _plan(self, req: Any, ns: str, job_id: str) -> Any:
        from .admission import admit
        from .common import HTTPError, Reply
        from .hcl import canonicalize, multierror, validate_job

        body = self._decode(req)
        fields = {k.lower(): v for k, v in (body if isinstance(body, dict) else {}).items()}
        job = fields.get("job")
        if not isinstance(job, dict):
            raise HTTPError(400, "Job must be specified")
        if not job.get("ID"):
            raise HTTPError(400, "Job must have a valid ID")
        if job["ID"] != job_id:
            raise HTTPError(400, "Job ID does not match")
        # Namespace precedence as in register (apiJobAndRequestToStructs): query, body, job, "default".
        namespace = req.query.get("namespace") or fields.get("namespace") or job.get("Namespace") or "default"
        new = admit(canonicalize(json.loads(json.dumps(job))))
        new["Namespace"] = namespace
        problems = validate_job(new)
        if problems:
            raise HTTPError(500, multierror(problems))
        with self._cond:
            rec = self._jobs.get((namespace, job["ID"]))
            old = copy.deepcopy(rec.job) if rec is not None else None
            reply = plan_reply(old, new, with_diff=bool(fields.get("diff")))
            reply["FailedTGAllocs"] = self._plan_failures(new, reply["Annotations"]["DesiredTGUpdates"]) or None
        return Reply(reply, index=reply["Index"], read=False)

    def _plan_failures(self, job: dict[str, Any], updates: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
        from .common import is_parent
        from .nodes import select_node

        if is_parent(job) or job.get("Type") not in ("batch", "sysbatch"):
            return {}
        failed = {}
        allocs = list(self._allocs.values())
        for group in job.get("TaskGroups") or []:
            counts = updates.get(group["Name"]) or {}
            wanted = int(counts.get("Place") or 0) + int(counts.get("DestructiveUpdate") or 0)
            if wanted:
                choice = select_node(job, group, self._nodes, allocs)
                if choice.node is None:
                    failed[group["Name"]] = {**choice.metric, "CoalescedFailures": wanted - 1}
        return failed
