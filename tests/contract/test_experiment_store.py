"""One contract for both experiment stores: file and Consul (double, or a real agent), via ``pointer_kind``."""

from __future__ import annotations

import json
import threading
import time

import pytest

from caravan.experiments import Arm, Experiment, ExperimentConflict, ExperimentInvalid, experiment_store
from caravan.experiments.bandit import period_seed, thompson_weights
from caravan.experiments.document import experiment_key, stats_prefix


def experiment(model: str, weights: tuple[float, float] = (0.5, 0.5), **fields) -> Experiment:
    arms = (Arm("control", "TrainRanker/a", "file:///art/TrainRanker/a", weights[0]),
            Arm("challenger", "TrainRanker/b", "file:///art/TrainRanker/b", weights[1]))
    return Experiment(model=model, arms=arms, policy="thompson", reward="click", **fields)


def test_a_missing_experiment_reads_as_none_at_version_zero(pointer_kind, model_name):
    assert experiment_store().read(model_name) == (None, 0)


def test_write_is_check_and_set(pointer_kind, model_name):
    store = experiment_store()
    exp = experiment(model_name)
    v1 = store.write(exp, 0)
    assert v1 > 0
    assert store.read(model_name) == (exp, v1)
    with pytest.raises(ExperimentConflict, match=model_name):
        store.write(exp.with_weights({"control": 0.1}), 0)  # create-only on an existing document
    v2 = store.write(exp.with_weights({"control": 0.2}), v1)
    assert v2 != v1
    with pytest.raises(ExperimentConflict):
        store.write(exp.with_weights({"control": 0.3}), v1)  # stale version
    assert store.read(model_name)[0].arm("control").weight == 0.2


def test_concurrent_writers_have_exactly_one_winner(pointer_kind, model_name):
    store = experiment_store()
    version = store.write(experiment(model_name), 0)
    barrier = threading.Barrier(4)
    outcomes: dict[int, str] = {}

    def write(i: int) -> None:
        barrier.wait()
        try:
            experiment_store().write(experiment(model_name, (i + 1.0, 1.0)), version)
            outcomes[i] = "won"
        except ExperimentConflict:
            outcomes[i] = "lost"

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, o in outcomes.items() if o == "won"]
    assert len(winners) == 1 and len(outcomes) == 4
    assert store.read(model_name)[0].arm("control").weight == winners[0] + 1.0


def test_update_rereads_after_a_lost_race(pointer_kind, model_name):
    store = experiment_store()
    store.write(experiment(model_name), 0)
    seen = []

    def decide(exp):
        seen.append(exp.arm("control").weight)
        if len(seen) == 1:  # someone else writes between our read and our write
            other, version = store.read(model_name)
            store.write(other.with_weights({"control": 0.9}), version)
        return exp.with_weights({"challenger": 0.7})

    result = store.update(model_name, decide)
    assert seen == [0.5, 0.9]
    assert result.arm("control").weight == 0.9 and result.arm("challenger").weight == 0.7


def test_watch_returns_when_the_document_changes_and_after_its_wait_otherwise(pointer_kind, model_name):
    store = experiment_store()
    version = store.write(experiment(model_name), 0)
    started = time.monotonic()
    assert store.watch(model_name, version, 1.0)[1] == version
    assert time.monotonic() - started >= 0.9
    got: dict[str, object] = {}

    def watch() -> None:
        got["result"] = experiment_store().watch(model_name, version, 20.0)

    watcher = threading.Thread(target=watch)
    watcher.start()
    new_version = store.write(experiment(model_name).with_weights({"control": 0.25}), version)
    watcher.join(25)
    exp, seen = got["result"]
    assert seen == new_version and exp.arm("control").weight == 0.25


def test_a_watch_on_a_missing_experiment_wakes_when_it_is_created(pointer_kind, model_name):
    got: dict[str, object] = {}
    watcher = threading.Thread(target=lambda: got.update(r=experiment_store().watch(model_name, 0, 20.0)))
    watcher.start()
    experiment_store().write(experiment(model_name), 0)
    watcher.join(25)
    assert got["r"][0] is not None and got["r"][1] > 0


def test_stats_of_every_gateway_are_merged_and_filtered_by_salt(pointer_kind, model_name):
    store = experiment_store()
    store.put_stats(model_name, "gw-1", {"control": (3, 97), "challenger": (5, 95)}, salt="s1")
    store.put_stats(model_name, "gw-2", {"control": (1, 9)}, salt="s1")
    store.put_stats(model_name, "gw-1", {"control": (4, 100), "challenger": (6, 100)}, salt="s1")  # replaces
    store.put_stats(model_name, "gw-old", {"control": (1000, 0)}, salt="s0")
    assert store.read_stats(model_name, salt="s1") == {"control": (5, 109), "challenger": (6, 100)}
    assert store.read_stats(model_name)["control"] == (1005, 109)
    store.clear_stats(model_name)
    assert store.read_stats(model_name) == {}


def test_two_gateways_sharing_counters_compute_the_same_weights(pointer_kind, model_name):
    """Each gateway writes its own counters, reads the merged ones, and seeds by period: same weights."""
    one, two = experiment_store(), experiment_store()
    one.put_stats(model_name, "gw-a", {"control": (40, 960), "challenger": (30, 470)}, salt="s")
    two.put_stats(model_name, "gw-b", {"control": (35, 865), "challenger": (45, 555)}, salt="s")
    merged_one, merged_two = one.read_stats(model_name, salt="s"), two.read_stats(model_name, salt="s")
    assert merged_one == merged_two == {"control": (75, 1825), "challenger": (75, 1025)}
    weights_one = thompson_weights(merged_one, rng=period_seed("s", 3))
    weights_two = thompson_weights(merged_two, rng=period_seed("s", 3))
    assert weights_one == weights_two
    assert weights_one["challenger"] > weights_one["control"]


@pytest.mark.parametrize("bad, field", [
    ({"policy": "greedy"}, "policy"), ({"state": "paused"}, "state"), ({"winner": "nobody"}, "winner"),
    ({"salt": ""}, "salt"), ({"extra": 1}, "extra"), ({"arms": []}, "arms"),
])
def test_documents_are_validated_strictly_naming_the_field(bad, field):
    data = experiment("m").to_dict()
    data.update(bad)
    with pytest.raises(ExperimentInvalid, match=field):
        Experiment.from_json(json.dumps(data))


def test_bad_arms_are_refused_naming_the_arm():
    with pytest.raises(ExperimentInvalid, match=r"arm 'x'.*weight"):
        Arm("x", "T/a", "file:///T/a", -1.0)
    with pytest.raises(ExperimentInvalid, match=r"arm 'x'.*does not end"):
        Arm("x", "T/a", "file:///T/b", 1.0)
    with pytest.raises(ExperimentInvalid, match="arm name"):
        Arm("bad name", "T/a", "file:///T/a", 1.0)
    with pytest.raises(ExperimentInvalid, match="twice"):
        Experiment(model="m", arms=(Arm("a", "T/a", "file:///T/a", 1.0), Arm("a", "T/b", "file:///T/b", 1.0)))


def test_a_document_round_trips_through_json():
    exp = experiment("m", (0.3, 0.7))
    assert Experiment.from_json(exp.to_json()) == exp
    assert Experiment.from_json(exp.to_json()).to_json() == exp.to_json()


def test_keys_sit_beside_the_model_pointer():
    assert experiment_key("ranker", "prod") == "caravan/prod/experiments/ranker"
    assert stats_prefix("ranker", "prod") == "caravan/prod/experiments/ranker/stats/"


def test_a_corrupt_stored_document_is_one_clear_error(pointer_kind, model_name, tmp_path):
    store = experiment_store()
    if pointer_kind == "file":
        path = store._path(experiment_key(model_name, store.environment))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"version": 3, "document": {"model": "x"}}')
    else:
        key = experiment_key(model_name, store.environment)
        store.client.kv.put(key, b'{"model": 1')
    with pytest.raises(ExperimentInvalid, match="experiment"):
        store.read(model_name)


def test_consul_errors_are_the_pointers_and_name_the_key(model_name):
    """A refused connection is BackendUnavailable (retryable) naming the experiment key, as for the pointer."""
    import socket

    from caravan.errors import BackendUnavailable
    from caravan.experiments.consul import ConsulExperimentStore

    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{sock.getsockname()[1]}"
        store = ConsulExperimentStore(address=address, token="", timeout_s=1.0)
        with pytest.raises(BackendUnavailable, match=f"experiments/{model_name}"):
            store.read(model_name)
        with pytest.raises(BackendUnavailable, match=f"experiments/{model_name}/stats/"):
            store.read_stats(model_name)
