"""The ``caravan`` command: look at runs, move model pointers, serve, publish jobs.

Every error is one line on stderr (``caravan: …``) with a non-zero exit code and no traceback;
``--debug`` shows the traceback. A closed pipe (``caravan runs | head -1``) ends quietly.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .addressing import MANIFEST_NAME, unescape
from .config import artifact_root, artifact_root_origin
from .errors import CaravanError
from .tables import fit, key_metric_headers, metric_cells, render, terminal_width

#: A task family: a class name, optionally behind a luigi namespace (``pipelines.TrainRanker``); never a path.
_FAMILY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def check_family(family: str) -> str:
    """``family`` if it names a task family; a path (``../..``, ``a/b``) is refused: listings stay inside the root."""
    if not _FAMILY.fullmatch(family):
        raise CaravanError(f"--family {family!r} is not a task family name (like TrainRanker): it must stay "
                           "inside the artifact root")
    return family


def resolve_root(given: str | None) -> str:
    """The artifact root to read: ``--root`` or the one in effect; a local root that does not exist is an error
    (an empty table would say "nothing was built" when caravan looked in the wrong place)."""
    root = given or artifact_root()
    local = root.removeprefix("file://") if root.startswith("file://") else root if "://" not in root else None
    if local is not None and not os.path.isdir(local):
        origin = "--root" if given else artifact_root_origin()
        raise CaravanError(f"artifact root {os.path.abspath(local)} does not exist (from {origin}); run caravan "
                           "inside the project (it finds the nearest luigi.cfg upwards), or give --root or "
                           "CARAVAN_ARTIFACT_ROOT")
    return root


def _manifests(root: str, family: str | None) -> list[dict[str, Any]]:
    from .artifacts import Artifact
    from .storage import open_store

    store = open_store(root)
    prefix = f"{check_family(family)}/" if family is not None else ""
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


def _table(rows: list[list[str]], headers: list[str], *, wide: bool = False, id_columns: Sequence[int] = (),
           free_columns: Sequence[int] = ()) -> str:
    """Every value in full unless stdout is a terminal (and not ``--wide``): then fitted to its width."""
    width = None if wide else terminal_width()
    return render(fit(rows, headers, width=width, id_columns=id_columns, free_columns=free_columns), headers)


def cmd_runs(args: argparse.Namespace) -> int:
    manifests = _manifests(resolve_root(args.root), args.family)[: args.limit]
    if args.json:
        print(json.dumps(manifests, indent=2, sort_keys=True, default=str))
        return 0
    rows = []
    for m in manifests:
        keys, rest = metric_cells(m.get("metrics"))
        rows.append([str(m.get("finished_at", ""))[:19], m["artifact_id"], *keys, rest,
                     f"{m.get('duration_s', 0):.1f}", str((m.get("executor") or {}).get("name", ""))])
    headers = ["finished (UTC)", "artifact", *key_metric_headers(), "other metrics", "secs", "executor"]
    print(_table(rows, headers, wide=args.wide, id_columns=[1], free_columns=[len(headers) - 3]))
    return 0


def find_artifact(manifests: list[dict[str, Any]], ref: str, root: str) -> dict[str, Any]:
    """The one artifact ``ref`` names: its URI, its full id, or a part of its id no other artifact has."""
    if not ref.strip():
        raise CaravanError("no artifact given: give its URI, its id or a unique part of its id")
    exact = [m for m in manifests if ref in (m["uri"], m["artifact_id"], m["uri"].rstrip("/"))]
    # A part of the id as printed (escaped: "name=a~3Db") or as the parameter reads ("name=a=b").
    matches = exact or [m for m in manifests if ref in m["artifact_id"] or ref in unescape(m["artifact_id"])]
    if not matches:
        raise CaravanError(f"no artifact matches {ref!r} under {root} (see caravan runs)")
    if len(matches) > 1:
        shown = ", ".join(m["artifact_id"] for m in matches[:5]) + (", …" if len(matches) > 5 else "")
        raise CaravanError(f"{ref!r} matches {len(matches)} artifacts: {shown}; give more of its id, or its URI")
    return matches[0]


def cmd_compare(args: argparse.Namespace) -> int:
    root = resolve_root(args.root)
    manifests = _manifests(root, None)
    a, b = find_artifact(manifests, args.a, root), find_artifact(manifests, args.b, root)
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

    pointer = open_pointer()
    state = pointer.read(args.model)  # a corrupt pointer is one line: PointerCorrupt says how to repair it
    if state.document is None:
        where = f" (pointers under {pointer_root})" if (pointer_root := getattr(pointer, "root", None)) else ""
        raise CaravanError(f"model {args.model!r} has no current model yet{where}")
    if args.json:
        _print_json({**state.document, "version": state.version})
        return 0
    doc = state.document
    print(f"{args.model}: {doc['artifact_uri']}")
    previous = doc.get("previous_artifact_id")
    print(f"  promoted {doc.get('promoted_at')} by {doc.get('promoted_by')} ({doc.get('action')})"
          + (f"; previous {previous}" if previous else "; the first model"))
    keys, rest = metric_cells(doc.get("metrics"))
    shown = [f"{name} {value}" for name, value in zip(key_metric_headers(), keys, strict=True) if value]
    if shown or rest:
        print("  metrics " + ", ".join([*shown, *([rest] if rest else [])]))
    return 0


def cmd_models_history(args: argparse.Namespace) -> int:
    from .registry import open_pointer
    from .registry.base import PointerCorrupt, lineage

    pointer = open_pointer()
    entries = pointer.history(args.model)
    try:
        state = pointer.read(args.model)
    except PointerCorrupt as exc:  # the history is still readable (and names what --force could restore)
        print(f"caravan: {exc}", file=sys.stderr)
    else:
        if not entries and state.document is None:
            where = f" under {pointer.root}" if hasattr(pointer, "root") else ""
            raise CaravanError(f"no model {args.model!r}{where}: it was never promoted (caravan models promote)")
    stack, rolled_back = lineage(entries)
    current = stack[-1].get("change_id") if stack else None
    for entry in entries:
        entry["state"] = "rolled back" if entry.get("change_id") in rolled_back else \
            "current" if entry.get("change_id") == current else ""
    # Issue 13: the monitor's triggers (caravan.monitoring.triggers) in the same timeline, by time.
    from .monitoring.triggers import history_entries

    triggers = [{**t, "state": str(t.get("outcome") or "")} for t in history_entries(pointer, args.model)]
    if triggers:
        entries = sorted([*entries, *triggers], key=lambda e: str(e.get("promoted_at") or e.get("at") or ""))
    if args.json:
        _print_json(entries)
        return 0

    def shown(e: dict[str, Any]) -> tuple[str, str, str]:
        if e.get("action") == "trigger":
            return (str(e.get("at", "")), f"trigger {e.get('kind', '')}",
                    str(e.get("rolled_back_to") or e.get("child") or ""))
        return str(e.get("promoted_at", "")), str(e.get("action", "")), str(e.get("artifact_id", ""))

    rows = [[shown(e)[0][:19], shown(e)[1], e["state"], shown(e)[2],
             *metric_cells(e.get("metrics"))[0], str(e.get("reason") or "; ".join(e.get("reasons") or []))]
            for e in entries]
    headers = ["when (UTC)", "action", "state", "artifact", *key_metric_headers(), "why"]
    print(_table(rows, headers, wide=args.wide, id_columns=[3], free_columns=[len(headers) - 1]))
    return 0


def _operator() -> str:
    return f"cli:{getpass.getuser()}"


def cmd_models_promote(args: argparse.Namespace) -> int:
    """The pipeline's protocol (caravan.promotion.decide) under the promotion lock; --force skips only the gate."""
    from .promotion import decide, is_current
    from .registry import open_pointer
    from .registry.base import floor_models
    from .registry.gate import UnsoundModel, check_sound, judge
    from .step import artifact_at

    pointer = open_pointer()
    candidate = artifact_at(*_candidate(args.artifact))
    candidate.manifest()  # fails clearly when nothing is published there
    with pointer.lock(args.model, holder=_operator(), timeout_s=args.lock_timeout):
        for _ in range(5):
            if args.force:  # may replace a corrupt pointer: it names the version the corrupt one has
                state, corrupt = pointer.read_for_repair(args.model)
            else:
                state, corrupt = pointer.read(args.model), None
            if corrupt is None and is_current(state, candidate):
                print(f"{args.model} already serves {candidate.uri}; nothing changed, nothing recorded")
                return 0
            if args.force:
                try:
                    check_sound(candidate)
                    verdict: dict[str, Any] = {
                        "decision": "promote", "reasons": ["forced by an operator: gate skipped, soundness checked"
                                                           + ("; replaced a corrupt pointer" if corrupt else "")]}
                except UnsoundModel as exc:
                    verdict = {"decision": "reject", "reasons": [f"--force refused: {exc}"]}
            else:
                current = artifact_at(state.document["artifact_uri"], state.document["artifact_id"]) \
                    if state.document else None
                verdict = judge(candidate, current, tolerance=args.tolerance,
                                floor=floor_models(pointer.history(args.model), args.floor_window),
                                allow_schema_change=args.allow_schema_change)
            outcome, _entry = decide(pointer, args.model, candidate, state, verdict, promoted_by=_operator(),
                                     action="force" if args.force else "promote")
            if outcome == "moved":
                continue
            if outcome == "reject":
                what = "" if args.force else f"gate rejected {candidate.id}: "
                raise CaravanError(f"{args.model}: {what}" + "; ".join(verdict["reasons"])
                                   + " (recorded in the history)")
            print(f"{args.model} now serves {candidate.uri}")
            for note in verdict.get("notes", []):
                print(f"  note: {note}")
            return 0
    raise CaravanError(f"{args.model}: the pointer kept moving during 5 attempts to promote {candidate.id}")


def _candidate(ref: str) -> tuple[str, str]:
    """The URI and id of the artifact ``ref`` names: a URI (of any store), or an id or a unique part of one
    under the artifact root."""
    if "://" in ref or os.path.isabs(ref):
        return ref, _artifact_id_of(ref)
    root = resolve_root(None)
    found = find_artifact(_manifests(root, None), ref, root)
    return str(found["uri"]), str(found["artifact_id"])


def _artifact_id_of(uri: str) -> str:
    """An artifact id from its URI: the last three segments (Family/partition/name) or two without a partition."""
    parts = uri.rstrip("/").split("/")
    if len(parts) < 2:
        raise CaravanError(f"{uri!r} is not an artifact URI (<root>/<Family>/[partition/]<name>)")
    return "/".join(parts[-3:]) if "=" in parts[-2] else "/".join(parts[-2:])


def cmd_models_rollback(args: argparse.Namespace) -> int:
    """Back along the lineage, under the promotion lock; the target is decided inside the check-and-set loop."""
    from .registry import open_pointer
    from .registry.base import PointerState, rollback_target

    pointer = open_pointer()
    chosen: dict[str, Any] = {}

    def decide(state: PointerState) -> dict[str, Any]:
        target, undone = rollback_target(args.model, state, pointer.history(args.model), args.to)
        chosen.update(target)
        return {"artifact_uri": target["artifact_uri"], "artifact_id": target["artifact_id"],
                "metrics": target.get("metrics"), "action": "rollback", "promoted_by": _operator(),
                "target_change_id": target.get("change_id"), "rolled_back": undone,
                "reason": f"rollback from {state.artifact_id}" + (f" to {args.to}" if args.to else "")}

    with pointer.lock(args.model, holder=_operator(), timeout_s=args.lock_timeout):
        pointer.repair_history(args.model)
        pointer.change(args.model, decide)
    print(f"{args.model} rolled back to {chosen['artifact_uri']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serving.app import serve

    serve(args.model, host=args.host, port=args.port, pointer_kind=args.pointer, isolate=not args.no_isolation,
          max_rows=args.max_rows, max_body_bytes=args.max_body_bytes, event_log=_event_log_options(args))
    return 0


def _event_log_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The event log flags as :meth:`caravan.events.log.EventLog.for_server` options (None: --no-event-log)."""
    if args.no_event_log:
        return None
    return {"root": args.log_root, "spool_dir": args.log_spool_dir, "flush_rows": args.log_flush_rows,
            "flush_s": args.log_flush_s, "spool_max_bytes": args.log_spool_max_bytes, "drain_s": args.log_drain_s}


def _add_event_log_flags(parser: argparse.ArgumentParser) -> None:
    events = parser.add_argument_group("event log", "every answered prediction and every POST /feedback is "
                                       "appended to {root}/_events/MODEL/ as Parquet (see caravan.events.log)")
    events.add_argument("--no-event-log", action="store_true", help="log no predictions or feedback")
    events.add_argument("--log-root", metavar="URI", help="store of the log (default: the artifact root)")
    events.add_argument("--log-flush-rows", type=int, default=10_000, metavar="N",
                        help="write a file once N rows are buffered (default 10000)")
    events.add_argument("--log-flush-s", type=float, default=10.0, metavar="S",
                        help="write buffered rows at least every S seconds (default 10)")
    events.add_argument("--log-spool-dir", metavar="DIR", help="local folder for files on their way to the "
                        "store (default: $NOMAD_ALLOC_DIR/data or the temp folder, named for model and port)")
    events.add_argument("--log-spool-max-bytes", type=int, default=1 << 30, metavar="N",
                        help="spool bound while the store is away; rows beyond it are dropped and counted in "
                        "/metrics and /health (default 1 GiB)")
    events.add_argument("--log-drain-s", type=float, default=20.0, metavar="S",
                        help="on shutdown (SIGTERM), how long to keep shipping spooled files (default 20; "
                        "what is left stays spooled for the next start)")


def cmd_publish(args: argparse.Namespace) -> int:
    from .publish import publish_command

    return publish_command(args)


def cmd_trigger_retrain(args: argparse.Namespace) -> int:
    from .trigger import trigger_command

    return trigger_command(args)


class Parser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line too (``caravan runs: …; see caravan runs --help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: str) -> str:
    """``text`` on one line: its non-blank lines joined by ``; ``."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


# --- experiments (issue 12): `caravan experiment start|status|stop` and `caravan models list` -----------------


def cmd_experiment_start(args: argparse.Namespace) -> int:
    from .experiments import commands, experiment_store
    from .registry import open_pointer

    exp = commands.start(open_pointer(), experiment_store(), args.model, args.arm, weights=args.weights,
                         policy=args.policy, unit=args.unit, reward=args.reward, operator=_operator())
    print(f"{args.model}: experiment started ({exp.policy}, unit {exp.unit}): "
          + ", ".join(f"{a.name}={a.artifact_id} {a.weight:.0%}" for a in exp.arms))
    return 0


def cmd_experiment_status(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .experiments import commands, experiment_store

    store = experiment_store()
    exp = commands.running(store, args.model)
    arms = commands.status(store, args.model, exp)
    if args.json:
        _print_json({"experiment": exp.to_dict(), "arms": [asdict(a) for a in arms]})
        return 0
    print(f"{args.model}: {exp.policy} experiment since {exp.started_at}, unit {exp.unit}, reward {exp.reward}")
    rows = [[a.name, _short(a.artifact_id, 60), f"{a.traffic:.1%}", str(a.requests), str(a.rewards),
             f"{a.rate:.2%} [{a.low:.2%}, {a.high:.2%}]", f"{a.prob_best:.3f}"] for a in arms]
    print(_table(rows, ["arm", "artifact", "traffic", "requests", "rewards", "success rate [95%]", "P(best)"]))
    return 0


def cmd_experiment_stop(args: argparse.Namespace) -> int:
    from .experiments import commands, experiment_store
    from .registry import open_pointer

    _, outcome = commands.stop(open_pointer(), experiment_store(), args.model, args.winner,
                               tolerance=args.tolerance, floor_window=args.floor_window,
                               allow_schema_change=args.allow_schema_change, lock_timeout_s=args.lock_timeout,
                               operator=_operator())
    print(f"{args.model}: experiment stopped, winner {args.winner}: {outcome}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .experiments import commands, experiment_store
    from .registry import open_pointer

    found = commands.versions(open_pointer(), experiment_store(), args.model)
    if args.json:
        _print_json([asdict(v) for v in found])
        return 0
    rows = [[v.status, _short(v.artifact_id, 60), v.since[:19], _short(v.metrics or {}, 50), v.experiment]
            for v in found]
    print(_table(rows, ["status", "artifact", "since (UTC)", "metrics", "experiment"]))
    return 0


def _add_experiment_parsers(sub: Any, models_sub: Any) -> None:
    listing = models_sub.add_parser("list", help="every version of a model with its status: production, ab:<arm>, "
                                    "candidate, rejected, retired")
    listing.add_argument("model")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_models_list)

    experiment = sub.add_parser("experiment", help="A/B tests and bandits between versions of a model")
    experiment_sub = experiment.add_subparsers(dest="experiment_command", required=True)
    start = experiment_sub.add_parser(
        "start", help="start an experiment: arms, weights, policy",
        description="Every challenger must pass the gate's soundness check (loaded in a disposable process) and "
        "keep the current model's serving schema. The gateway follows the experiment live.")
    start.add_argument("model")
    start.add_argument("--arm", action="append", required=True, metavar="NAME=current|URI",
                       help="an arm: NAME=current (the current model) or NAME=<artifact URI>; repeat per arm")
    start.add_argument("--weights", metavar="W1,W2,...", help="initial traffic shares in arm order (default equal)")
    start.add_argument("--policy", choices=["fixed", "thompson"], default="thompson",
                       help="fixed: the weights hold; thompson: gateways move them toward the best arm (default)")
    start.add_argument("--unit", default="user_id", help="the request field users stick by (default user_id)")
    start.add_argument("--reward", default="reward", help="what a reward of 1 means, for the record (e.g. click)")
    start.set_defaults(func=cmd_experiment_start)
    status = experiment_sub.add_parser("status", help="per arm: traffic, requests, rewards, success rate with a "
                                       "95%% interval, probability of being best")
    status.add_argument("model")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_experiment_status)
    stop = experiment_sub.add_parser(
        "stop", help="end the experiment: promote the winner through the gate",
        description="The winner goes through the promotion protocol of 'caravan models promote' (the gate judges it "
        "against the current model on the same holdout rows); a rejection leaves the experiment running.")
    stop.add_argument("model")
    stop.add_argument("--winner", required=True, metavar="ARM")
    stop.add_argument("--tolerance", type=float, default=0.01)
    stop.add_argument("--floor-window", type=int, default=10, metavar="N")
    stop.add_argument("--allow-schema-change", action="store_true")
    stop.add_argument("--lock-timeout", type=float, default=60.0, metavar="SECONDS")
    stop.set_defaults(func=cmd_experiment_stop)


# --- end of experiments ------------------------------------------------------------------------------------------


# --- worker (issue 12): `caravan worker`, one model behind gRPC for the gateway ------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    from .serving.worker import run_worker

    run_worker(args.model, arm=args.arm, artifact=args.artifact, host=args.host, grpc_port=args.grpc_port,
               http_port=args.http_port, isolate=not args.no_isolation, max_rows=args.max_rows,
               pointer_kind=args.pointer)
    return 0


def _add_worker_parser(sub: Any) -> None:
    worker = sub.add_parser(
        "worker", help="serve one model version over gRPC (caravan.v1.Predictor) for gateways",
        description="Serves the artifact of an experiment's arm (--arm, followed live: a new artifact for the arm "
        "is tried in a disposable process, then swapped in) or one artifact (--artifact). gRPC Predict on "
        "--grpc-port; GET /health and /metrics on --http-port. Requests are checked as `caravan serve` checks them.")
    worker.add_argument("--model", required=True)
    which = worker.add_mutually_exclusive_group(required=True)
    which.add_argument("--arm", metavar="NAME", help="serve this arm of the model's experiment")
    which.add_argument("--artifact", metavar="URI", help="serve this artifact")
    worker.add_argument("--host", default=os.environ.get("CARAVAN_SERVE_HOST", "0.0.0.0"))  # noqa: S104
    worker.add_argument("--grpc-port", type=int, default=int(os.environ.get("NOMAD_PORT_grpc", "9000")))
    worker.add_argument("--http-port", type=int, default=int(os.environ.get("NOMAD_PORT_http", "9001")))
    worker.add_argument("--pointer", choices=["file", "consul"],
                        help="experiment store backend (default: the configured pointer backend)")
    worker.add_argument("--max-rows", type=int, default=10_000, help="rows per request at most (default 10000)")
    worker.add_argument("--no-isolation", action="store_true",
                        help="load new models without trying them in a disposable probe process first (trusted "
                        "models only)")
    worker.set_defaults(func=cmd_worker)


# --- end of worker ------------------------------------------------------------------------------------------------

# --- gateway (issue 12): `caravan gateway`, the HTTP front that routes each request to an arm's workers ------------


def cmd_gateway(args: argparse.Namespace) -> int:
    from .gateway.app import serve as serve_gateway

    serve_gateway(args.model, host=args.host, port=args.port, workers=args.worker or (), unit=args.unit,
                  production_arm=args.production_arm, enrich=args.enrich, update_s=args.update_s,
                  min_weight=args.min_weight, timeout_s=args.timeout_s, store_kind=args.pointer,
                  max_body_bytes=args.max_body_bytes, event_log=_event_log_options(args))
    return 0


def _add_gateway_parser(sub: Any) -> None:
    gateway = sub.add_parser(
        "gateway", help="HTTP front for a model's workers: sticky A/B arms by user, Thompson sampling, feedback",
        description="POST /predict takes `caravan serve`'s bodies plus the unit field; each request goes to its "
        "arm of the model's experiment (followed live) and to a healthy worker of that arm over gRPC, else to the "
        "production arm. POST /feedback {request_id, reward: 0|1} counts rewards for the bandit. Workers come "
        "from --worker, else from Consul (service caravan-<env>-worker, tags model=M and arm=NAME, passing). "
        "The request-id signing key: CARAVAN_SECRET_GATEWAY_SIGNING_KEY, else the secret serving/gateway_signing_key.")
    gateway.add_argument("--model", required=True)
    gateway.add_argument("--host", default=os.environ.get("CARAVAN_SERVE_HOST", "0.0.0.0"))  # noqa: S104
    gateway.add_argument("--port", type=int, default=int(os.environ.get("NOMAD_PORT_http", "8080")))
    gateway.add_argument("--worker", action="append", metavar="ARM=HOST:PORT",
                         help="a worker of an arm (repeatable); without any, workers are found in Consul")
    gateway.add_argument("--unit", help="the body field naming the unit of assignment (default: the "
                         "experiment's, user_id)")
    gateway.add_argument("--production-arm", default="control", metavar="NAME",
                         help="the arm that serves when there is no experiment, and when an arm has no healthy "
                         "worker (default control; the experiment's first arm if it has none of that name)")
    gateway.add_argument("--enrich", metavar="MODULE:FUNCTION",
                         help="a function (unit, rows) -> rows that adds features, e.g. "
                         "caravan.gateway.enrich_parquet:enrich")
    gateway.add_argument("--update-s", type=float, default=60.0,
                         help="seconds between bandit updates: share counters, recompute weights (default 60)")
    gateway.add_argument("--min-weight", type=float, default=0.05,
                         help="the least share of traffic any arm gets under Thompson sampling (default 0.05)")
    gateway.add_argument("--timeout-s", type=float, default=2.0,
                         help="deadline of a request's worker calls, failover included (default 2)")
    gateway.add_argument("--pointer", choices=["file", "consul"],
                         help="experiment store backend (default: the configured pointer backend)")
    gateway.add_argument("--max-body-bytes", type=int, default=64 * 1024 * 1024, metavar="N",
                         help="request body size limit, enforced while reading (default 64 MiB)")
    _add_event_log_flags(gateway)
    gateway.set_defaults(func=cmd_gateway)


# --- end of gateway -----------------------------------------------------------------------------------------------



def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="caravan", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    runs = sub.add_parser("runs", help="recent artifacts with parameters, metrics, durations and executor")
    runs.add_argument("--root", help="artifact root (default: CARAVAN_ARTIFACT_ROOT, else [caravan] artifact_root "
                      "of the nearest luigi.cfg upwards)")
    runs.add_argument("--family", help="only this task family, e.g. TrainRanker")
    runs.add_argument("--limit", type=int, default=30)
    runs.add_argument("--json", action="store_true", help="machine-readable output")
    runs.add_argument("--wide", action="store_true", help="never shorten values, even on a terminal")
    runs.set_defaults(func=cmd_runs)
    runs_sub = runs.add_subparsers(dest="runs_command")
    compare = runs_sub.add_parser("compare", help="two runs side by side")
    compare.add_argument("a", help="artifact id (or a unique part of it) or URI")
    compare.add_argument("b", help="artifact id (or a unique part of it) or URI")
    compare.add_argument("--root")
    compare.add_argument("--json", action="store_true")
    compare.set_defaults(func=cmd_compare)
    from .verify import add_parser as add_verify_parser  # caravan verify [--family F] [--quarantine]

    add_verify_parser(sub, resolve_root=resolve_root, check_family=check_family)

    models = sub.add_parser("models", help="the model pointers: current, history, promote, rollback")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    for name, func, text in (("current", cmd_models_current, "the current model"),
                             ("history", cmd_models_history, "every change and rejected candidate, oldest first")):
        cmd = models_sub.add_parser(name, help=text)
        cmd.add_argument("model")
        cmd.add_argument("--json", action="store_true")
        if name == "history":
            cmd.add_argument("--wide", action="store_true", help="never shorten values, even on a terminal")
        cmd.set_defaults(func=func)
    promote = models_sub.add_parser(
        "promote", help="make an artifact the current model, through the gate",
        description="The pipeline's promotion protocol: under the promotion lock, the gate judges the candidate "
        "against the current model and the best recent promotion on the same holdout rows; a rejection is "
        "recorded in the history and exits 1. --force skips the comparison, never the soundness check.")
    promote.add_argument("model")
    promote.add_argument("artifact", help="the artifact's URI, its id, or a part of its id no other artifact has")
    promote.add_argument("--force", action="store_true",
                         help="skip the gate's comparison (the model must still load, score and have a schema); "
                         "also replaces a corrupt pointer")
    promote.add_argument("--tolerance", type=float, default=0.01)
    promote.add_argument("--floor-window", type=int, default=10, metavar="N",
                         help="also within the tolerance of the best of the last N promotions (default 10)")
    promote.add_argument("--allow-schema-change", action="store_true",
                         help="accept a serving schema that breaks the current one's (recorded in the history)")
    promote.add_argument("--lock-timeout", type=float, default=60.0, metavar="SECONDS")
    promote.set_defaults(func=cmd_models_promote)
    rollback = models_sub.add_parser(
        "rollback", help="go back to the model that was current before the current one",
        description="Walks the history backwards, skipping models that were rolled back: repeated rollbacks go "
        "further back, never forward.")
    rollback.add_argument("model")
    rollback.add_argument("--to", metavar="ID", help="an artifact id (or change id) that was current before")
    rollback.add_argument("--lock-timeout", type=float, default=60.0, metavar="SECONDS")
    rollback.set_defaults(func=cmd_models_rollback)
    _add_experiment_parsers(sub, models_sub)

    serve = sub.add_parser("serve", help="serve the current model over HTTP, reloading it when the pointer moves")
    serve.add_argument("--model", required=True)
    serve.add_argument("--host", default=os.environ.get("CARAVAN_SERVE_HOST", "0.0.0.0"))  # noqa: S104
    serve.add_argument("--port", type=int, default=int(os.environ.get("NOMAD_PORT_http", "8080")))
    serve.add_argument("--pointer", choices=["file", "consul"], help="pointer backend (default: configured)")
    serve.add_argument("--max-rows", type=int, default=10_000, help="rows per request at most (default 10000)")
    serve.add_argument("--max-body-bytes", type=int, metavar="N",
                       help="request body size limit, enforced while reading (default: room for --max-rows rows "
                       "of the served model's features)")
    serve.add_argument("--no-isolation", action="store_true",
                       help="load new models in the server process without trying them in a disposable probe "
                       "process first (only for models you trust: a damaged model file can abort the server)")
    _add_event_log_flags(serve)
    serve.set_defaults(func=cmd_serve)
    _add_worker_parser(sub)
    _add_gateway_parser(sub)

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

    from .monitoring.cli import add_monitor_parser

    add_monitor_parser(sub)
    return parser


def _quiet_stdout() -> None:
    """After a closed pipe: send what is left of stdout to /dev/null, so that flushing it at exit fails no more
    (as the Python documentation's "Note on SIGPIPE" does)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``caravan`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at interpreter exit
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return 141  # what a shell reports for a command killed by SIGPIPE (128 + 13)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("caravan: interrupted", file=sys.stderr)
        return 130
    except CaravanError as exc:
        if args.debug:
            raise
        print(f"caravan: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except Exception as exc:  # any failure is one line; --debug shows where it came from
        if args.debug:
            raise
        print(f"caravan: {type(exc).__name__}: {one_line(str(exc)) or 'no message'} (--debug shows the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
