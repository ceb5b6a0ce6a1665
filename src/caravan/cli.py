"""The ``caravan`` command: look at runs, move model pointers, serve, publish jobs.

Errors caravan raises on purpose are printed as one headline (no traceback) with exit code 1;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .addressing import MANIFEST_NAME
from .config import artifact_root
from .errors import CaravanError


def _manifests(root: str, family: str | None) -> list[dict[str, Any]]:
    from .artifacts import Artifact
    from .storage import open_store

    store = open_store(root)
    prefix = f"{family}/" if family else ""
    found = []
    for key in store.list_keys(prefix):
        if key.endswith("/" + MANIFEST_NAME) and "/_attempts/" not in key:
            artifact_id = key[: -len(MANIFEST_NAME) - 1]
            try:
                manifest = Artifact(store, artifact_id).manifest()
            except CaravanError as exc:
                manifest = {"artifact_id": artifact_id, "error": str(exc)}
            manifest["uri"] = store.uri(artifact_id)
            found.append(manifest)
    return sorted(found, key=lambda m: str(m.get("finished_at", "")), reverse=True)


def _short(value: Any, width: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(lines)


def cmd_runs(args: argparse.Namespace) -> int:
    manifests = _manifests(args.root or artifact_root(), args.family)[: args.limit]
    if args.json:
        print(json.dumps(manifests, indent=2, sort_keys=True, default=str))
        return 0
    rows = [[str(m.get("finished_at", ""))[:19], _short(m["artifact_id"], 70),
             _short(m.get("metrics") or {}, 60), f"{m.get('duration_s', 0):.1f}",
             str((m.get("executor") or {}).get("name", ""))] for m in manifests]
    print(_table(rows, ["finished (UTC)", "artifact", "metrics", "secs", "executor"]))
    return 0


def _find(manifests: list[dict[str, Any]], ref: str) -> dict[str, Any]:
    matches = [m for m in manifests if m["uri"] == ref or ref in m["artifact_id"]]
    if len(matches) != 1:
        raise CaravanError(f"{ref!r} matches {len(matches)} artifacts; give a longer part of its id, or its URI")
    return matches[0]


def cmd_compare(args: argparse.Namespace) -> int:
    manifests = _manifests(args.root or artifact_root(), None)
    a, b = _find(manifests, args.a), _find(manifests, args.b)
    fields: list[tuple[str, Any, Any]] = [("artifact", a["artifact_id"], b["artifact_id"])]
    for section in ("params", "metrics"):
        for key in sorted(set(a.get(section) or {}) | set(b.get(section) or {})):
            left, right = a.get(section) or {}, b.get(section) or {}
            fields.append((f"{section}.{key}", left.get(key, ""), right.get(key, "")))
    for key in ("code_version", "duration_s", "run_id", "finished_at"):
        fields.append((key, a.get(key, ""), b.get(key, "")))
    fields.append(("executor", (a.get("executor") or {}).get("name", ""), (b.get("executor") or {}).get("name", "")))
    if args.json:
        print(json.dumps({"a": a, "b": b}, indent=2, sort_keys=True, default=str))
        return 0
    rows = [[name, _short(x, 50), _short(y, 50), "" if x == y else "≠"] for name, x, y in fields]
    print(_table(rows, ["field", "A", "B", ""]))
    return 0


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def cmd_models_current(args: argparse.Namespace) -> int:
    from .registry import open_pointer

    state = open_pointer().read(args.model)
    if state.document is None:
        raise CaravanError(f"model {args.model!r} has no current model yet")
    if args.json:
        _print_json({**state.document, "version": state.version})
        return 0
    doc = state.document
    print(f"{args.model}: {doc['artifact_uri']}")
    print(f"  promoted {doc.get('promoted_at')} by {doc.get('promoted_by')} ({doc.get('action')}); "
          f"previous {doc.get('previous_artifact_id')}")
    print(f"  metrics {_short(doc.get('metrics'), 200)}")
    return 0


def cmd_models_history(args: argparse.Namespace) -> int:
    from .registry import open_pointer

    entries = open_pointer().history(args.model)
    if args.json:
        _print_json(entries)
        return 0
    rows = [[str(e.get("promoted_at", ""))[:19], str(e.get("action", "")), _short(e.get("artifact_id", ""), 70),
             _short(e.get("reason") or "; ".join(e.get("reasons") or []), 80)] for e in entries]
    print(_table(rows, ["when (UTC)", "action", "artifact", "why"]))
    return 0


def cmd_models_promote(args: argparse.Namespace) -> int:
    from .registry import open_pointer
    from .registry.gate import judge
    from .step import artifact_at

    pointer = open_pointer()
    candidate = artifact_at(args.artifact_uri, _artifact_id_of(args.artifact_uri))
    candidate.manifest()  # fails clearly when nothing is published there

    def decide(state: Any) -> dict[str, Any] | None:
        reason = "forced by an operator (gate skipped)"
        if not args.force:
            current = artifact_at(state.document["artifact_uri"], state.document["artifact_id"]) if state.document \
                else None
            verdict = judge(candidate, current, tolerance=args.tolerance)
            if verdict["decision"] != "promote":
                raise CaravanError("gate rejected the candidate: " + "; ".join(verdict["reasons"]))
            reason = "; ".join(verdict["reasons"])
        return {"artifact_uri": candidate.uri, "artifact_id": candidate.id, "metrics": candidate.metrics,
                "action": "force" if args.force else "promote", "reason": reason,
                "promoted_by": f"cli:{getpass.getuser()}"}

    pointer.change(args.model, decide)
    print(f"{args.model} now serves {candidate.uri}")
    return 0


def _artifact_id_of(uri: str) -> str:
    """An artifact id from its URI: the last three segments (Family/partition/name) or two without a partition."""
    parts = uri.rstrip("/").split("/")
    return "/".join(parts[-3:]) if "=" in parts[-2] else "/".join(parts[-2:])


def cmd_models_rollback(args: argparse.Namespace) -> int:
    from .registry import open_pointer

    pointer = open_pointer()
    target = pointer.rollback_target(args.model)

    def decide(state: Any) -> dict[str, Any]:
        return {"artifact_uri": target["artifact_uri"], "artifact_id": target["artifact_id"],
                "metrics": target.get("metrics"), "action": "rollback", "promoted_by": f"cli:{getpass.getuser()}",
                "reason": f"rollback from {state.artifact_id}"}

    pointer.change(args.model, decide)
    print(f"{args.model} rolled back to {target['artifact_uri']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serving.app import serve

    serve(args.model, host=args.host, port=args.port, pointer_kind=args.pointer)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from .publish import publish_command

    return publish_command(args)


def cmd_trigger_retrain(args: argparse.Namespace) -> int:
    from .trigger import trigger_command

    return trigger_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caravan", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    runs = sub.add_parser("runs", help="recent artifacts with parameters, metrics, durations and executor")
    runs.add_argument("--root", help="artifact root (default: CARAVAN_ARTIFACT_ROOT or [caravan] artifact_root)")
    runs.add_argument("--family", help="only this task family, e.g. TrainRanker")
    runs.add_argument("--limit", type=int, default=30)
    runs.add_argument("--json", action="store_true", help="machine-readable output")
    runs.set_defaults(func=cmd_runs)
    runs_sub = runs.add_subparsers(dest="runs_command")
    compare = runs_sub.add_parser("compare", help="two runs side by side")
    compare.add_argument("a", help="artifact id (or a unique part of it) or URI")
    compare.add_argument("b", help="artifact id (or a unique part of it) or URI")
    compare.add_argument("--root")
    compare.add_argument("--json", action="store_true")
    compare.set_defaults(func=cmd_compare)

    models = sub.add_parser("models", help="the model pointers: current, history, promote, rollback")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    for name, func, text in (("current", cmd_models_current, "the current model"),
                             ("history", cmd_models_history, "every change and rejected candidate, oldest first")):
        cmd = models_sub.add_parser(name, help=text)
        cmd.add_argument("model")
        cmd.add_argument("--json", action="store_true")
        cmd.set_defaults(func=func)
    promote = models_sub.add_parser("promote", help="make an artifact the current model (through the gate)")
    promote.add_argument("model")
    promote.add_argument("artifact_uri")
    promote.add_argument("--force", action="store_true", help="skip the gate")
    promote.add_argument("--tolerance", type=float, default=0.01)
    promote.set_defaults(func=cmd_models_promote)
    rollback = models_sub.add_parser("rollback", help="go back to the model before the current one")
    rollback.add_argument("model")
    rollback.set_defaults(func=cmd_models_rollback)

    serve = sub.add_parser("serve", help="serve the current model over HTTP, reloading it when the pointer moves")
    serve.add_argument("--model", required=True)
    serve.add_argument("--host", default=os.environ.get("CARAVAN_SERVE_HOST", "0.0.0.0"))  # noqa: S104
    serve.add_argument("--port", type=int, default=int(os.environ.get("NOMAD_PORT_http", "8080")))
    serve.add_argument("--pointer", choices=["file", "consul"], help="pointer backend (default: configured)")
    serve.set_defaults(func=cmd_serve)

    publish = sub.add_parser("publish", help="render every nomad/*.nomad.hcl with a release's image and register "
                             "the jobs that changed", description="Parse every job spec through Nomad with the "
                             "release's variables; register nothing unless all parse; register only created and "
                             "changed jobs (check-and-set on their JobModifyIndex). Exit code 1 on any error.")
    publish.add_argument("--version", required=True, metavar="TAG",
                         help="image tag of the release: image = <[publish] image_repository>:TAG")
    publish.add_argument("--dry-run", action="store_true", help="report what would change; register nothing")
    publish.add_argument("--diff", action="store_true", help="print every changed field, values in full")
    publish.add_argument("--var", action="append", metavar="NAME=VALUE",
                         help="set a variable in every spec that declares it (lists: a,b or JSON); repeatable")
    publish.add_argument("--jobs-dir", metavar="DIR", help="folder of the specs (default: the steps' jobspec dir)")
    publish.add_argument("--only", nargs="+", action="extend", metavar="JOB", help="only these specs (file names)")
    publish.set_defaults(func=cmd_publish)

    trigger = sub.add_parser("trigger", help="start a run now")
    trigger_sub = trigger.add_subparsers(dest="trigger_command", required=True)
    retrain = trigger_sub.add_parser(
        "retrain", help="force-launch the periodic retraining job, or retrain another day",
        description="Without --date (or with yesterday's), force-launch the periodic job: its run retrains on "
        "yesterday (UTC). With an earlier --date, dispatch the backfill job with -meta date=DATE. "
        "Prints the child job id.")
    retrain.add_argument("--date", metavar="YYYY-MM-DD", help="the day to retrain on (default: yesterday, UTC)")
    retrain.add_argument("--job", default="retrain-ranker", help="the periodic job (default: retrain-ranker)")
    retrain.add_argument("--backfill-job", metavar="JOB",
                         help="the parameterized job for other days (default: <job>-backfill)")
    retrain.set_defaults(func=cmd_trigger_retrain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``caravan`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CaravanError as exc:
        if args.debug:
            raise
        print(f"caravan: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
