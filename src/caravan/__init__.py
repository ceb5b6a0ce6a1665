"""caravan: Luigi pipelines whose heavy steps run as Nomad jobs, with append-only artifacts.

The public API is what this module exports; everything else is private and may change.
Heavy backends (boto3, hdfs, python-nomad, py-consul, hvac, lightgbm) are imported only
when a configured feature needs them, so ``import caravan`` stays fast.

gRPC's fork support is off in caravan's processes unless ``GRPC_ENABLE_FORK_SUPPORT`` says otherwise:
grpcio >= 1.80 restarts its poller in a forked child, and a ``subprocess.Popen(preexec_fn=...)`` child of a
process with a live channel can then abort before it execs (grpc/grpc#43055; 4 of 400 such children here).
caravan forks (luigi's task processes, the local executor's steps, the model probe) but never uses gRPC in a
forked child. gRPC reads the variable when it is first imported, which in caravan is always after this module.
"""

import os as _os

_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from .addressing import Address
from .artifacts import (
    Artifact,
    ArtifactTask,
    ArtifactWriter,
    complete_many,
    current_run_id,
)
from .errors import (
    ArtifactCorruptError,
    ArtifactError,
    ArtifactExistsError,
    ArtifactNotFoundError,
    BackendError,
    BackendRejected,
    BackendUnavailable,
    CaravanError,
    ConfigurationError,
    JobSpecError,
    PointerConflict,
    PromotionLocked,
    SecretAccessDenied,
    SecretNotFound,
    StepFailed,
)
from .storage import Store, open_store
from .version import __version__  # noqa: F401 - caravan.__version__, as every package has

__all__ = [
    "Address",
    "Artifact",
    "ArtifactCorruptError",
    "ArtifactError",
    "ArtifactExistsError",
    "ArtifactNotFoundError",
    "ArtifactTask",
    "ArtifactWriter",
    "BackendError",
    "BackendRejected",
    "BackendUnavailable",
    "CaravanError",
    "ConfigurationError",
    "JobSpecError",
    "PointerConflict",
    "PromotionLocked",
    "SecretAccessDenied",
    "SecretNotFound",
    "StepFailed",
    "Store",
    "complete_many",
    "current_run_id",
    "open_store",
]
