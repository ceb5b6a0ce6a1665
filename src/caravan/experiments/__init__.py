"""Online experiments: which artifacts serve model M's traffic, and in what shares.

The contract, in a few lines (this package knows nothing of HTTP or gRPC; the gateway and the worker
build on it):

- ``document.py``: one experiment document per model, ``caravan/<env>/experiments/M`` (arms with
  their artifact and weight, policy ``fixed`` or ``thompson``, unit, salt, reward, state), read and
  written by check-and-set on its version (:class:`ExperimentStore`), and per-gateway reward counters
  under ``caravan/<env>/experiments/M/stats/<gateway-id>`` merged by every reader.
- ``assign.py``: a unit's arm is a deterministic function of (salt, unit, weights): sticky while the
  weights hold; a weight change moves only as many units as it must.
- ``bandit.py``: pure maths: Thompson weights with a floor, 95% intervals, probability of being best.
- ``commands.py``: what ``caravan experiment start|status|stop`` and ``caravan models list`` do.

:func:`experiment_store` picks the backend the model pointer uses (``CARAVAN_POINTER`` /
``[caravan] pointer``): ``file`` (beside the pointer root) or ``consul``.
"""

from __future__ import annotations

from ..config import caravan, section, setting
from ..errors import ConfigurationError
from .document import Arm, Experiment, ExperimentConflict, ExperimentInvalid, ExperimentStore

__all__ = ["Arm", "Experiment", "ExperimentConflict", "ExperimentInvalid", "ExperimentStore", "experiment_store"]


def experiment_store(kind: str | None = None) -> ExperimentStore:
    """The configured experiment store (the same backend and settings as the model pointer)."""
    kind = kind or setting("CARAVAN_POINTER", section(caravan).pointer)
    if kind == "file":
        from .file import FileExperimentStore

        return FileExperimentStore(setting("CARAVAN_POINTER_ROOT", section(caravan).pointer_root))
    if kind == "consul":
        from .consul import ConsulExperimentStore

        return ConsulExperimentStore()
    raise ConfigurationError(f"unknown experiment store backend {kind!r}; caravan knows 'file' and 'consul'")
