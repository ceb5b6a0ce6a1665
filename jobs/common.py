"""What several steps share (kept in the library, caravan.ml.features, so the promotion gate uses the same code)."""

import sys

from caravan.ml.features import SPLITS, feature_matrix, feature_types, labels, load_split, numeric_columns

__all__ = ["SPLITS", "feature_matrix", "feature_types", "labels", "lightgbm_without_extras", "load_split",
           "numeric_columns"]


def lightgbm_without_extras() -> None:
    """Keep this step process's ``import lightgbm`` from importing scikit-learn and Dask.

    LightGBM imports its optional scikit-learn and Dask wrappers as soon as it is imported, whenever they are
    installed (lightgbm/compat.py). The steps use neither (``lgb.train`` and ``Booster`` only) and the image
    installs neither; where they are installed, as in a development or test virtualenv, scikit-learn and the
    scipy.stats it pulls in are most of a LightGBM step's start (about 0.8 s of 1 s). The serving probe's child
    does the same (caravan.serving.probe). For a step's own process only: call it under ``__main__``, before the
    step runs; nothing else in the process can import those two afterwards.
    """
    for name in ("sklearn", "dask"):
        sys.modules.setdefault(name, None)  # None: "import sklearn" raises ImportError, which LightGBM expects
