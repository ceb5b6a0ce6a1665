"""Helpers shared by the streaming tests (issue 14): published Parquet artifacts, and a step run under RLIMIT_AS."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from caravan.addressing import Address
from caravan.artifacts import Artifact
from caravan.storage import open_store

ROOT = Path(__file__).resolve().parents[1]


def publish(root: str, family: str, files: dict[str, Any], tmp: Path, upstream: Any = None) -> Artifact:
    """An artifact of ``files``: tables as Parquet (``(table, row_group_rows)``), text, or JSON."""
    artifact = Artifact(open_store(root), Address(family, {"n": uuid.uuid4().hex}, upstream=upstream))
    with artifact.writer() as writer:
        for name, value in files.items():
            if isinstance(value, tuple):
                path = tmp / f"{uuid.uuid4().hex}.parquet"
                pq.write_table(value[0], path, row_group_size=value[1])
                writer.write_file(name, path)
            elif isinstance(value, str):
                writer.write_text(name, value)
            else:
                writer.write_json(name, value)
    return Artifact(open_store(root), artifact.id)


#: Run first in every limited child: ``vm_bytes()`` and ``limit_address_space(headroom_mb)``, which caps the
#: address space at what the process has mapped so far (libraries imported, thread pools started) plus the
#: headroom, so that the limit is what the data may add.
LIMIT_PRELUDE = textwrap.dedent("""
    import resource, sys
    sys.path.insert(0, {root!r})

    def vm_bytes():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))

    def limit_address_space(headroom_mb):
        limit = vm_bytes() + headroom_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
""").format(root=str(ROOT))


def run_limited(code: str, env: Mapping[str, str] | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (which calls ``limit_address_space``) in a fresh Python after :data:`LIMIT_PRELUDE`.

    RLIMIT_AS counts address space, not memory used: Arrow's jemalloc pool crashes (SIGSEGV) when a mapping
    is refused and mimalloc reserves its space before the limit is set, so the child runs on Arrow's system
    pool; one glibc arena, as every extra one reserves 64 MiB of address space. ``env`` adds variables.
    """
    full = {"PATH": "/usr/bin:/bin", "ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", LIMIT_PRELUDE + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=full)
