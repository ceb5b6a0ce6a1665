"""The drift reference is resolved before ValidateData's address is computed, and fails closed on outages."""

from __future__ import annotations

import datetime as dt
import logging
from types import SimpleNamespace

import pytest

from caravan.errors import ArtifactNotFoundError, BackendUnavailable
from caravan.promotion import reference_dataset
from caravan.registry import open_pointer
from caravan.storage import open_store
from jobs.validate_data import reference_dataset as step_reference
from pipelines.ranker import RetrainRanker

from ..contract.test_pointer_contract import write_raw_pointer
from ..servers import free_port
from ..tiny_models import make_dataset, make_model


def promote(model_name: str, artifact) -> None:
    pointer = open_pointer()
    pointer.set_if(model_name, {"artifact_id": artifact.id, "artifact_uri": artifact.uri, "action": "promote"},
                   pointer.read(model_name))


def test_the_reference_is_the_current_models_training_data_and_part_of_the_address(pointer_kind, model_name,
                                                                                   local_root):
    retrain = RetrainRanker(date=dt.date(2026, 11, 22), model=model_name)
    assert retrain.requires()["validation"].reference == "", "no current model: no drift check"

    data = make_dataset(local_root, "d", {"s1": 1.0})
    promote(model_name, make_model(local_root, data, ["s1"], name="m"))
    later = RetrainRanker(date=dt.date(2026, 11, 23), model=model_name)
    validation = later.requires()["validation"]
    assert validation.reference == data.id
    assert data.id in str(validation.address().identity()["params"]), "the address names what it compares with"


def test_a_corrupt_pointer_or_a_missing_model_means_no_reference(pointer_kind, model_name, local_root, caplog):
    caplog.set_level(logging.WARNING, logger="caravan.promotion")
    data = make_dataset(local_root, "d", {"s1": 1.0})
    model = make_model(local_root, data, ["s1"], name="m")
    promote(model_name, model)
    write_raw_pointer(pointer_kind, model_name, b'{"artifact_id": ')
    assert reference_dataset(model_name) == ""
    assert "is corrupt" in caplog.text

    gone = SimpleNamespace(id="TrainRanker/name=gone--0123456789abcdef",
                           uri=open_store(local_root).uri("TrainRanker/name=gone--0123456789abcdef"))
    other = f"{model_name}-gone"
    promote(other, gone)
    assert reference_dataset(other) == ""


def test_an_unreachable_pointer_backend_fails_instead_of_skipping_the_check(model_name, local_root, monkeypatch):
    monkeypatch.setenv("CARAVAN_POINTER", "consul")
    monkeypatch.setenv("CONSUL_HTTP_ADDR", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(BackendUnavailable):
        reference_dataset(model_name)


def test_the_step_reads_only_the_reference_it_is_given(local_root):
    store = open_store(local_root)
    data = make_dataset(local_root, "d", {"s1": 1.0})
    log = logging.getLogger("test")

    def ctx(reference: str) -> SimpleNamespace:
        return SimpleNamespace(params={"reference": reference}, output=SimpleNamespace(store=store), log=log)

    assert step_reference(ctx("")) is None
    found = step_reference(ctx(data.id))
    assert found is not None and found.id == data.id
    with pytest.raises(ArtifactNotFoundError):
        step_reference(ctx("PrepareDataset/name=gone--0123456789abcdef"))
