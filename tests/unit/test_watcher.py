"""The watcher's start-up fallback, one step at a time: which earlier model it serves when the current one is
refused. Models that fail cleanly stand in for crashing ones (no probe here: everything loads in this process)."""

from __future__ import annotations

from typing import Any

import pytest

from caravan import Artifact
from caravan.registry.base import new_change_id
from caravan.registry.file import FilePointer
from caravan.serving.model import ModelHolder
from caravan.serving.observe import Metrics
from caravan.serving.watcher import Watcher

from ..badmodels import publish_model

MODEL = "fallback"


@pytest.fixture
def pointer(tmp_path) -> FilePointer:
    return FilePointer(tmp_path / "pointers")


def promote(pointer: FilePointer, artifact: Artifact, **extra: Any) -> dict[str, Any]:
    document = {"artifact_uri": artifact.uri, "artifact_id": artifact.id, "action": "promote", **extra}
    written = pointer.change(MODEL, lambda state: document)[1]
    assert written is not None
    return written


def start(pointer: FilePointer) -> tuple[Watcher, ModelHolder]:
    """A watcher that has read the pointer once, as at start-up."""
    holder = ModelHolder()
    watcher = Watcher(pointer, MODEL, holder, Metrics(), probe=None)
    watcher.step()
    return watcher, holder


def test_a_refused_current_model_falls_back_to_the_one_before(pointer, local_root):
    older, good, broken = publish_model(local_root, 1), publish_model(local_root, 2), \
        publish_model(local_root, 3, corrupt=True)
    for artifact in (older, good, broken):
        promote(pointer, artifact)
    watcher, holder = start(pointer)
    assert holder.current is not None and holder.current.artifact_id == good.id
    status, reason = watcher.status()
    assert status == "degraded" and broken.id in reason and good.id in reason, reason


def test_a_rejected_candidate_is_never_the_fallback(pointer, local_root):
    good, rejected, broken = publish_model(local_root, 1), publish_model(local_root, 2), \
        publish_model(local_root, 3, corrupt=True)
    promote(pointer, good)
    pointer.record(MODEL, {"artifact_uri": rejected.uri, "artifact_id": rejected.id, "action": "reject",
                           "change_id": new_change_id(), "reasons": ["worse than the current model"]})
    promote(pointer, broken)
    _, holder = start(pointer)
    assert holder.current is not None and holder.current.artifact_id == good.id


def test_a_rolled_back_model_is_never_the_fallback(pointer, local_root):
    """A (broken), B promoted then rolled back to A, C (broken) promoted: nothing in the lineage loads, and B,
    which an operator undid, is not served instead."""
    first, undone, broken = publish_model(local_root, 1, corrupt=True), publish_model(local_root, 2), \
        publish_model(local_root, 3, corrupt=True)
    a = promote(pointer, first)
    promote(pointer, undone)
    promote(pointer, first, action="rollback", target_change_id=a["change_id"])
    promote(pointer, broken)
    watcher, holder = start(pointer)
    assert holder.current is None
    status, reason = watcher.status()
    assert status == "unavailable" and "no earlier model" in reason, reason


def test_a_next_good_promotion_ends_the_fallback(pointer, local_root):
    good, broken, newer = publish_model(local_root, 1), publish_model(local_root, 2, corrupt=True), \
        publish_model(local_root, 3)
    promote(pointer, good)
    promote(pointer, broken)
    watcher, holder = start(pointer)
    assert watcher.status()[0] == "degraded"
    promote(pointer, newer)
    watcher.step()
    assert holder.current is not None and holder.current.artifact_id == newer.id
    assert watcher.status() == ("ok", None)
    assert holder.reloads_failed == 1
