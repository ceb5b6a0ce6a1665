"""Machine-learning helpers the pipeline steps share: simulated data, data checks, text features, metrics.

Each submodule is imported explicitly (``from caravan.ml.metrics import roc_auc``); nothing is
imported here, so ``import caravan`` stays light.

- :mod:`caravan.ml.simulate`: a SIMULATED, deterministic recommendation click log with a learnable signal.
- :mod:`caravan.ml.stats`: schemas, column statistics, schema-skew checks and value drift (PSI).
- :mod:`caravan.ml.text`: tokenization and stable hashed text features.
- :mod:`caravan.ml.metrics`: ROC AUC, log loss, average precision, NDCG@k, calibration and a PNG plot.
"""
