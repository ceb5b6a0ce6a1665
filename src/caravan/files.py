"""Local files written whole: a reader sees the old bytes or the new ones, never part of them.

The bytes go to a temporary file beside the target (same folder, so the same file system), are flushed
and fsynced, and only then take the target's name. Used by the local store, the file model pointer and
the file experiment store.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def temp_beside(target: Path, data: bytes) -> Path:
    """A hidden temporary file beside ``target`` holding ``data``, on disk; removed if writing it fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def replace_file(target: Path, data: bytes) -> None:
    """``target`` now holds ``data``, swapped in by one rename."""
    os.replace(temp_beside(target, data), target)
