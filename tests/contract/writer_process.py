"""A writer in its own process, for crash and race tests: ``python -m tests.contract.writer_process``.

Arguments: ROOT_URI WRITER_ID MODE [BARRIER_FILE]. MODE is ``die`` (stage, then SIGKILL
itself before publishing) or ``publish`` (stage, wait for the barrier file, publish).
Prints the outcome, or the error class name, as its last line.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from caravan import Address, Artifact, ArtifactExistsError, open_store

ADDRESS = Address("Contended", {"date": "2026-11-22", "k": "v"}, partition_key="date")


def main() -> None:
    root, writer_id, mode = sys.argv[1:4]
    barrier = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    writer = Artifact(open_store(root), ADDRESS).writer()
    for name in ("a.txt", "b.txt", "nested/c.txt"):
        writer.write_text(name, f"{name} from writer {writer_id}\n" * 50)
    print("staged", writer.attempt, flush=True)
    if mode == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if barrier is not None:
        while not barrier.exists():
            time.sleep(0.005)
    try:
        print(writer.publish(), flush=True)
    except ArtifactExistsError:
        print("ArtifactExistsError", flush=True)


if __name__ == "__main__":
    main()
