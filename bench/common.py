"""What every bench shares: the repository root on ``sys.path``, one percentile, one goal verdict, a checked build.

Import it first in a bench (``from common import ROOT, percentile, verdict``): a bench runs as a
script, so its own folder is on ``sys.path`` and this module is found; importing it puts the
repository root there too, so ``caravan``, ``jobs``, ``pipelines`` and ``tests`` import afterwards.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0–100] of ``values``; NaN when there are none.

    Nearest rank, not interpolation: the answer is always a value that was measured (with 50
    values, p99 is the largest). NaN for no values makes every goal comparison false, so a bench
    that measured nothing cannot meet its goal.
    """
    if not 0 < q <= 100:
        raise ValueError(f"percentile q must be in (0, 100], got {q}")
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def verdict(goal: str, problems: Sequence[str]) -> int:
    """Print whether ``goal`` was met (met only when ``problems`` is empty); return the exit status.

    Benches build the list of what missed the goal and ``sys.exit(verdict(...))``, so a missed goal
    fails the command that ran it.
    """
    if problems:
        print(f"\ngoal ({goal}): NOT met: " + "; ".join(problems), flush=True)
        return 1
    print(f"\ngoal ({goal}): met", flush=True)
    return 0


def build(tasks: Iterable[Any], workers: int = 1) -> Any:
    """Run ``tasks`` with luigi's local scheduler; its detailed result, or exit naming what failed.

    ``luigi.build()`` alone returns True when tasks failed (only scheduling must succeed), so a bench
    that trusted it could time a failure; this checks luigi's own status instead.
    """
    import luigi
    from luigi.execution_summary import LuigiStatusCode

    result = luigi.build(list(tasks), local_scheduler=True, workers=workers, log_level="WARNING",
                         detailed_summary=True)
    if result.status not in (LuigiStatusCode.SUCCESS, LuigiStatusCode.SUCCESS_WITH_RETRY):
        raise SystemExit(f"luigi run failed ({result.status.name}):\n{result.summary_text}")
    return result
