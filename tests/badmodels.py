"""Model artifacts for the serving tests: small real LightGBM models, and damaged model files.

Each damaged variant passes LightGBM's own parser checks yet kills the process
that loads or scores it (``terminate called`` → SIGABRT, or SIGSEGV), as issue 10 found with 12 of
20 damaged variants. Tests use them to show that such a model never reaches a process that matters.

Every variant was checked by loading it in a subprocess (LightGBM 4.x): see
``tests/unit/test_probe.py::test_every_crashing_variant_really_kills_a_process``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from caravan import Address, Artifact, open_store

FEATURES = [{"name": "price", "type": "double"}, {"name": "position", "type": "int32"},
            {"name": "popular", "type": "bool"}]
ROW = {"price": 12.5, "position": 3, "popular": True}

# name → edit of a valid model.txt. Each edit touches the first tree only, so the header still parses.
CRASHERS: dict[str, Callable[[str], str]] = {
    "num_leaves_huge": lambda s: re.sub(r"num_leaves=\d+", "num_leaves=1000", s, count=1),
    "num_leaves_zero": lambda s: re.sub(r"num_leaves=\d+", "num_leaves=0", s, count=1),
    "num_leaves_negative": lambda s: re.sub(r"num_leaves=\d+", "num_leaves=-5", s, count=1),
    "split_feature_out_of_range": lambda s: re.sub(r"split_feature=\d+", "split_feature=99999", s, count=1),
    "left_child_out_of_range": lambda s: re.sub(r"left_child=-?\d+", "left_child=99999", s, count=1),
    "leaf_value_missing": lambda s: re.sub(r"leaf_value=[^\n]*\n", "", s, count=1),
    "leaf_value_short": lambda s: re.sub(r"leaf_value=(\S+) [^\n]*\n", r"leaf_value=\1\n", s, count=1),
    "tree_sizes_wrong": lambda s: re.sub(r"tree_sizes=\d+", "tree_sizes=5", s, count=1),
    "threshold_missing": lambda s: re.sub(r"threshold=[^\n]*\n", "", s, count=1),
    "decision_type_bad": lambda s: re.sub(r"decision_type=\d+", "decision_type=255", s, count=1),
    "num_cat_without_categories": lambda s: re.sub(r"num_cat=0", "num_cat=5", s, count=1),
}

# The model.txt the default crasher is made of is any valid one; this one is LightGBM's usual abort.
DEFAULT = "left_child_out_of_range"


def crashing_model_text(valid_model_text: str, variant: str = DEFAULT) -> str:
    """A damaged copy of ``valid_model_text`` that kills the process loading it."""
    damaged = CRASHERS[variant](valid_model_text)
    if damaged == valid_model_text:
        raise ValueError(f"variant {variant!r} found nothing to damage in this model (does it have a tree?)")
    return damaged


def model_text(seed: int) -> str:
    """A small real LightGBM model over :data:`FEATURES` (``5 + seed`` trees), as ``model.txt`` text."""
    import lightgbm as lgb

    x, y = _data(seed)
    booster = lgb.train({"objective": "binary", "verbosity": -1, "num_threads": 1, "seed": seed},
                        lgb.Dataset(x, y, feature_name=[f["name"] for f in FEATURES]), num_boost_round=5 + seed)
    return str(booster.model_to_string())


def _data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.uniform(1, 50, 2000), rng.integers(1, 20, 2000), rng.integers(0, 2, 2000)])
    y = (x[:, 0] / 50 + (x[:, 2] * 0.3) + rng.normal(0, 0.3, 2000) > 0.8).astype(float)
    return x, y


def publish_model(root: str, seed: int, corrupt: bool = False, crash: str | None = None) -> Artifact:
    """A training artifact holding a real model (seed ``seed``); with ``corrupt``, a model file LightGBM
    refuses cleanly; with ``crash`` (a :data:`CRASHERS` name), one that kills the process loading it."""
    text = model_text(seed)
    if corrupt:
        text = "this is not a LightGBM model\n"
    elif crash is not None:
        text = crashing_model_text(text, crash)
    params = {"seed": str(seed), "corrupt": str(corrupt)}
    if crash is not None:
        params["crash"] = crash
    artifact = Artifact(open_store(root), Address("ServedModel", params))
    x, _ = _data(seed)
    with artifact.writer() as writer:
        writer.write_text("model.txt", text)
        writer.write_json("features.json", {"label": "y", "features": FEATURES})
        writer.write_json("sample.json", [{"price": float(p), "position": int(q), "popular": bool(r)}
                                          for p, q, r in x[:16]])
    return artifact
