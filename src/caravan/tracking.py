"""Optional experiment tracking: a published training also becomes an MLflow run.

Only when ``[caravan] mlflow_tracking_uri`` (or ``MLFLOW_TRACKING_URI``, which wins) is set and
``mlflow`` (or ``mlflow-skinny``) is installed; without either nothing changes and nothing is
imported. The artifact stays the record: the run carries its hyperparameters, its numeric metrics
and the artifact's URI and id as tags, so MLflow's UI links back to the path. A tracking server
that fails is logged and never fails the step whose artifact is already published.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from .config import caravan, section, setting

log = logging.getLogger("caravan.tracking")


def tracking_uri() -> str:
    return setting("MLFLOW_TRACKING_URI", section(caravan).mlflow_tracking_uri)


def _flat(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested hyperparameters as MLflow params: dotted keys, string values (MLflow caps them at 6000 chars)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


def log_run(*, experiment: str, artifact_id: str, artifact_uri: str, params: Mapping[str, Any],
            metrics: Mapping[str, Any], tags: Mapping[str, str]) -> str | None:
    """Record one published artifact as an MLflow run; return the run id, or None when tracking is off."""
    uri = tracking_uri()
    if not uri:
        return None
    try:
        import mlflow
    except ImportError:
        log.warning("mlflow_tracking_uri is set (%s) but mlflow is not installed; not tracked", uri)
        return None
    numeric = {k: float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=artifact_id.rsplit("/", 1)[-1]) as run:
            mlflow.log_params(_flat(params))
            if numeric:
                mlflow.log_metrics(numeric)
            mlflow.set_tags({"caravan.artifact_uri": artifact_uri, "caravan.artifact_id": artifact_id, **tags})
            return str(run.info.run_id)
    except Exception as exc:  # tracking is a convenience: the published artifact is the record
        log.error("could not record %s in MLflow at %s: %s: %s", artifact_id, uri, type(exc).__name__, exc)
        return None
