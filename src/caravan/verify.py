"""Re-hash published artifacts against their manifests; quarantine the damaged ones so they are rebuilt.

A published artifact counts as complete for as long as its manifest exists, so a file damaged
after publication (a bad disk, a hand edit, a truncated copy) would otherwise be trusted for good.
:func:`verify` reads every file a manifest names and compares its size and sha256. With
``quarantine``, a damaged artifact's manifest is moved aside: its text goes into
``_QUARANTINE.json`` beside it, with the reason and the time, and the manifest is deleted, so the
artifact is no longer complete and the next run rebuilds it at the same address. The record keeps
every quarantine of that address, oldest first (a rebuilt artifact damaged again adds a second).

Quarantine is meant for between runs: a worker that is running keeps what it already knew to be
complete until it exits. The damaged attempt's files stay until the rebuild publishes, which prunes them.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .addressing import MANIFEST_NAME
from .artifacts import ATTEMPTS_DIR, LOGS_DIR, Artifact, completion_index
from .errors import ArtifactError, ArtifactNotFoundError
from .stamps import utc_now
from .storage import Store, open_store

QUARANTINE_NAME = "_QUARANTINE.json"
_SUFFIX = "/" + MANIFEST_NAME


@dataclass
class Finding:
    """One artifact's verdict: its id and URI, and what is wrong with it (nothing when it is intact)."""

    artifact_id: str
    uri: str
    problems: list[str] = field(default_factory=list)
    quarantined: bool = False

    @property
    def damaged(self) -> bool:
        return bool(self.problems)


def published_ids(store: Store, family: str | None = None) -> Iterator[str]:
    """Ids of the artifacts with a manifest under the root (or under one family), sorted."""
    prefix = f"{family}/" if family else ""
    ids = set()
    for key in store.list_keys(prefix):
        if not key.endswith(_SUFFIX):
            continue
        artifact_id = key[: -len(_SUFFIX)]
        # A step's own file may be called _MANIFEST.json inside its attempt folder: that is not an artifact.
        if not {ATTEMPTS_DIR, LOGS_DIR} & set(artifact_id.split("/")):
            ids.add(artifact_id)
    yield from sorted(ids)


def check(artifact: Artifact) -> list[str]:
    """What is wrong with a published artifact: an unreadable manifest, or files missing or changed."""
    try:
        manifest = artifact.manifest()
    except ArtifactNotFoundError:
        return ["the manifest is gone"]
    except ArtifactError as exc:
        return [f"manifest: {exc.args[0] if exc.args else exc}"]
    problems = []
    attempt = manifest.get("attempt")
    for name, entry in sorted(manifest["files"].items()):
        try:
            data = artifact.store.read(f"{artifact.key}/{ATTEMPTS_DIR}/{attempt}/{name}")
        except ArtifactNotFoundError:
            problems.append(f"file {name!r} is missing")
            continue
        if not isinstance(entry, dict):
            problems.append(f"file {name!r} has no size and sha256 in the manifest")
        elif len(data) != entry.get("size"):
            problems.append(f"file {name!r} has {len(data)} bytes, the manifest says {entry.get('size')}")
        elif hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            problems.append(f"file {name!r} does not match its sha256 in the manifest")
    return problems


def quarantine(store: Store, artifact_id: str, reason: str) -> dict[str, Any]:
    """Move ``artifact_id``'s manifest aside under a quarantine record; return the record's new entry.

    The record is written first, the manifest deleted after: if the deletion fails the manifest
    is kept in both places, and quarantining again adds no second entry for the same manifest.
    """
    manifest_key, record_key = f"{artifact_id}/{MANIFEST_NAME}", f"{artifact_id}/{QUARANTINE_NAME}"
    try:
        manifest_text = store.read(manifest_key).decode("utf-8", "replace")
    except ArtifactNotFoundError:
        manifest_text = None
    try:
        record = json.loads(store.read(record_key))
        history = record["history"] if isinstance(record, dict) and isinstance(record.get("history"), list) else []
    except ArtifactNotFoundError:
        history = []
    except ValueError:  # a damaged record is kept whole inside the new one, never dropped
        history = [{"unreadable_record": store.read(record_key).decode("utf-8", "replace")}]
    entry = {
        "reason": reason,
        "quarantined_at": utc_now(),
        "by": {"user": _user(), "host": socket.gethostname(), "pid": os.getpid()},
        "manifest": manifest_text,
    }
    if manifest_text is not None and not (history and history[-1].get("manifest") == manifest_text):
        history.append(entry)
        store.write(record_key, (json.dumps({"artifact_id": artifact_id, "history": history}, indent=2,
                                            sort_keys=True) + "\n").encode("utf-8"))
    store.delete(manifest_key)
    return entry


def _user() -> str:
    try:
        return os.getlogin()
    except OSError:
        return os.environ.get("USER", "unknown")


def quarantine_history(store: Store, artifact_id: str) -> list[dict[str, Any]]:
    """Every quarantine of ``artifact_id``, oldest first (empty when it was never quarantined)."""
    try:
        record = json.loads(store.read(f"{artifact_id}/{QUARANTINE_NAME}"))
    except ArtifactNotFoundError:
        return []
    history = record.get("history") if isinstance(record, dict) else None
    return list(history) if isinstance(history, list) else []


def verify(root: str, family: str | None = None, *, quarantine_damaged: bool = False) -> Iterator[Finding]:
    """Check every published artifact under ``root`` (or one family); quarantine the damaged ones if asked."""
    store = open_store(root)
    for artifact_id in published_ids(store, family):
        artifact = Artifact(store, artifact_id)
        finding = Finding(artifact_id, artifact.uri, check(artifact))
        if finding.damaged and quarantine_damaged:
            quarantine(store, artifact_id, "; ".join(finding.problems))
            completion_index.unmark(artifact)
            finding.quarantined = True
        yield finding


def add_parser(sub: Any, *, resolve_root: Callable[[str | None], str], check_family: Callable[[str], str]) -> None:
    """Register ``caravan verify`` on the CLI's subcommands, with the CLI's own root and family rules."""
    parser = sub.add_parser("verify", help="re-hash published artifacts against their manifests; report (and "
                                           "quarantine) the damaged ones")
    parser.add_argument("--root", help="artifact root (default: the one in effect, as for caravan runs)")
    parser.add_argument("--family", help="only this task family, e.g. TrainRanker")
    parser.add_argument("--quarantine", action="store_true",
                        help="move a damaged artifact's manifest aside (kept in _QUARANTINE.json with the reason) so "
                             "the next run rebuilds it")
    parser.set_defaults(func=functools.partial(cmd_verify, resolve_root=resolve_root, check_family=check_family))


def cmd_verify(args: argparse.Namespace, *, resolve_root: Callable[[str | None], str],
               check_family: Callable[[str], str]) -> int:
    """One line per damaged artifact; a summary line; exit 1 when any artifact is damaged."""
    root = resolve_root(args.root)
    family = check_family(args.family) if args.family else None
    checked = damaged = 0
    for finding in verify(root, family, quarantine_damaged=args.quarantine):
        checked += 1
        if finding.damaged:
            damaged += 1
            verdict = "quarantined" if finding.quarantined else "damaged"
            print(f"{verdict} {finding.uri}: {'; '.join(finding.problems)}", flush=True)
    what = f" of family {family}" if family else ""
    action = " and quarantined (the next run rebuilds them)" if args.quarantine and damaged else ""
    print(f"verified {checked} artifact{'s' if checked != 1 else ''}{what} under {root}: "
          f"{damaged} damaged{action}", flush=True)
    return 1 if damaged else 0
