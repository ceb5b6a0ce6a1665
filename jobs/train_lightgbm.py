"""Step ``train-lightgbm``: train one LightGBM model with the hyperparameters it is given.

Saves the model in LightGBM's text format, the feature list with types (the serving schema), and
the training curve. Deterministic: the same data and parameters give a byte-identical model file.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from caravan.step import StepContext, run_step

from .common import feature_matrix, feature_types, labels, lightgbm_without_extras, load_split, numeric_columns

BOOSTER_PARAMS = ("objective", "learning_rate", "num_leaves", "min_data_in_leaf", "feature_fraction",
                  "lambda_l2", "num_threads")


def booster_params(p: dict[str, Any]) -> dict[str, Any]:
    """LightGBM's parameters for the step's hyperparameters: seeded and deterministic."""
    params: dict[str, Any] = {k: p[k] for k in BOOSTER_PARAMS if k in p}
    params.update(seed=int(p["seed"]), deterministic=True, force_row_wise=True, verbosity=-1,
                  metric=["auc", "binary_logloss"], feature_fraction_seed=int(p["seed"]),
                  bagging_seed=int(p["seed"]), data_random_seed=int(p["seed"]))
    return params


def train(ctx: StepContext) -> None:
    import lightgbm as lgb

    p = ctx.params
    dataset, text = ctx.inputs["dataset"], ctx.inputs.get("text")
    train_table, valid_table = load_split(dataset, text, "train"), load_split(dataset, text, "valid")
    exclude = [*(p.get("exclude") or ()), p["label"]]
    features = list(p.get("features") or numeric_columns(train_table.schema, exclude=exclude))
    features = [f for f in features if f != p["label"]]
    unused = [f"{f.name} ({f.type})" for f in train_table.schema if f.name not in features and f.name not in exclude]
    if unused:  # never drop a column without a word: a string column needs --text-columns to count
        ctx.log.warning("columns not used as features (only numeric ones are; strings need --text-columns): %s",
                        ", ".join(unused))
    params = booster_params(p)
    dtrain = lgb.Dataset(feature_matrix(train_table, features), labels(train_table, p["label"]),
                         feature_name=features, free_raw_data=True)
    dvalid = lgb.Dataset(feature_matrix(valid_table, features), labels(valid_table, p["label"]), reference=dtrain)
    curve: dict[str, Any] = {}
    total = int(p["num_iterations"])

    def progress(env: lgb.callback.CallbackEnv) -> None:
        if (env.iteration + 1) % max(1, total // 10) == 0:
            scores = ", ".join(f"{name} {metric} {value:.4f}" for name, metric, value, _ in env.evaluation_result_list)
            ctx.log.info("iteration %d/%d: %s", env.iteration + 1, total, scores)

    # The curve is the validation metrics per round. Scoring the training set every round as well
    # (a full AUC sort of it) more than doubled the training time on 500k rows.
    booster = lgb.train(params, dtrain, num_boost_round=total, valid_sets=[dvalid], valid_names=["valid"],
                        callbacks=[lgb.early_stopping(int(p["early_stopping_rounds"]), verbose=False),
                                   lgb.record_evaluation(curve), progress])
    best = booster.best_iteration or total
    ctx.writer.write_text("model.txt", booster.model_to_string(num_iteration=best))
    ctx.writer.write_json("features.json", {"label": p["label"], "features": feature_types(train_table, features)})
    ctx.writer.write_json("curve.json", curve)
    # A few validation rows, as requests would send them: the server checks a new model on these before serving.
    sample = valid_table.select(features).slice(0, 32).to_pylist()
    ctx.writer.write_json("sample.json", [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
                                          for row in sample])
    ctx.writer.metrics.update(best_iteration=best, valid_auc=round(curve["valid"]["auc"][best - 1], 6),
                              valid_logloss=round(curve["valid"]["binary_logloss"][best - 1], 6),
                              rows_train=train_table.num_rows, n_features=len(features))


def train_distributed(ctx: StepContext) -> None:
    """One rank of a data-parallel training (``jobs.train_lightgbm distributed``; see caravan.ml.distributed).

    Every rank reads its shard of the train split and the whole validation split, meets its peers, and trains
    with LightGBM's data-parallel learner; all ranks end with the same model. Rank 0 alone publishes it, with the
    gang's size and shard layout in the manifest; the other ranks publish nothing. A failing rank aborts the gang.
    """
    import lightgbm as lgb
    import pyarrow as pa

    from caravan.ml.distributed import (
        EXIT_ABORTED,
        Endpoint,
        Gang,
        GangAborted,
        Rendezvous,
        Watchdog,
        group_rows_of,
        lightgbm_network,
        load_shard,
        open_parquet,
        shard_layout,
        without_network,
    )

    gang, endpoint = Gang.from_env(os.environ), Endpoint.from_env(os.environ)
    p = ctx.params
    dataset, text = ctx.inputs["dataset"], ctx.inputs.get("text")
    rendezvous = Rendezvous(ctx.output.store, ctx.output.key, gang.id)
    watchdog = Watchdog(rendezvous, gang.rank).start()
    try:
        source = open_parquet(dataset, "train.parquet")
        layout = shard_layout(group_rows_of(source), gang.size)
        start, stop = layout[gang.rank]["rows"]
        if stop <= start:
            raise ValueError(f"the train split has {source.metadata.num_rows} rows, too few for {gang.size} machines")
        shard = load_shard(dataset, text, "train", start, stop)
        valid_table = load_split(dataset, text, "valid")
        exclude = [*(p.get("exclude") or ()), p["label"]]
        features = list(p.get("features") or numeric_columns(shard.schema, exclude=exclude))
        features = [f for f in features if f != p["label"]]
        dtrain = lgb.Dataset(feature_matrix(shard, features), labels(shard, p["label"]), feature_name=features,
                             free_raw_data=True)
        dvalid = lgb.Dataset(feature_matrix(valid_table, features), labels(valid_table, p["label"]), reference=dtrain)
        ctx.log.info("rank %d of %d: rows [%d, %d) of the train split, row groups %s; waiting for the gang %s",
                     gang.rank, gang.size, start, stop, layout[gang.rank]["row_groups"], gang.id)
        # Registered only once the shard is in memory: LightGBM connects at once, and a slow reader must keep
        # its peers in this rendezvous (with a deadline), not in LightGBM's connect retries.
        rendezvous.announce(gang.rank, endpoint.host, endpoint.port, pid=os.getpid(),
                            alloc_id=os.environ.get("NOMAD_ALLOC_ID", ""))
        machines = rendezvous.machines(gang.size, gang.rendezvous_timeout_s)
        params = {**booster_params(p), **lightgbm_network(gang, endpoint, machines)}
        curve: dict[str, Any] = {}
        booster = lgb.train(params, dtrain, num_boost_round=int(p["num_iterations"]), valid_sets=[dvalid],
                            valid_names=["valid"],
                            callbacks=[lgb.early_stopping(int(p["early_stopping_rounds"]), verbose=False),
                                       lgb.record_evaluation(curve)])
    except GangAborted as exc:  # another rank failed first: say so, and exit as the watchdog would
        watchdog.stop()
        print(f"caravan gang: rank {gang.rank} stops: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_ABORTED) from None
    except BaseException as exc:
        watchdog.stop()  # this rank reports its own failure; its watchdog must not cut that short
        rendezvous.abort(f"rank {gang.rank}", f"{type(exc).__name__}: {exc}")
        raise
    watchdog.stop()
    if gang.rank != 0:
        ctx.writer.discard()  # every rank holds the same model; rank 0 alone publishes it
        ctx.log.info("rank %d done; rank 0 publishes the model", gang.rank)
        return
    best = booster.best_iteration or int(p["num_iterations"])
    ctx.writer.write_text("model.txt", without_network(booster.model_to_string(num_iteration=best)))
    schema_table = pa.Table.from_batches([], schema=shard.schema)
    ctx.writer.write_json("features.json", {"label": p["label"], "features": feature_types(schema_table, features)})
    ctx.writer.write_json("curve.json", curve)
    sample = valid_table.select(features).slice(0, 32).to_pylist()
    ctx.writer.write_json("sample.json", [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
                                          for row in sample])
    ctx.writer.extra["distributed"] = {"num_machines": gang.size, "tree_learner": "data", "split": "train",
                                       "rows": source.metadata.num_rows, "shards": layout}
    ctx.writer.metrics.update(best_iteration=best, valid_auc=round(curve["valid"]["auc"][best - 1], 6),
                              valid_logloss=round(curve["valid"]["binary_logloss"][best - 1], 6),
                              rows_train=source.metadata.num_rows, n_features=len(features),
                              num_machines=gang.size)


if __name__ == "__main__":
    lightgbm_without_extras()
    if sys.argv[1:] == ["distributed"]:
        # Only rank 0 publishes, so only rank 0 records a tracking run.
        run_step(train_distributed, job="train-lightgbm-distributed",
                 track=os.environ.get("NOMAD_META_caravan_rank") == "0")
    run_step(train, job="train-lightgbm", track=True)
