"""A publication that fails leaves no staged files behind, and the error that stopped it is the one raised."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from caravan import Address, Artifact, BackendUnavailable, open_store
from caravan.artifacts import ATTEMPTS_DIR
from caravan.storage.base import Store


class EdgeFailure(Store):
    """A store that forwards to a real one, except that ``create`` fails as the backend can.

    ``after_taking``: the create reaches the store and only its answer is lost (a timeout after the
    write), so the manifest does exist.
    """

    def __init__(self, inner: Store, error: Exception, after_taking: bool = False) -> None:
        super().__init__(inner.root_uri)
        self.inner, self.error, self.after_taking = inner, error, after_taking

    def read(self, key: str) -> bytes:
        return self.inner.read(key)

    def write(self, key: str, data: bytes) -> None:
        self.inner.write(key, data)

    def create(self, key: str, data: bytes) -> bool:
        if self.after_taking:
            self.inner.create(key, data)
        raise self.error

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list_keys(self, prefix: str) -> Iterator[str]:
        return self.inner.list_keys(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def delete_prefix(self, prefix: str) -> None:
        self.inner.delete_prefix(prefix)


def address(name: str) -> Address:
    return Address("Thing", {"date": "2026-11-22", "name": name}, partition_key="date")


def staged(store: Store, target: Artifact) -> list[str]:
    return list(store.list_keys(f"{target.key}/{ATTEMPTS_DIR}/"))


def test_staging_is_removed_when_publish_raises(store_root):
    inner = open_store(store_root)
    store = EdgeFailure(inner, BackendUnavailable("PUT If-None-Match: connection reset", backend="test"))
    target = Artifact(store, address("edge"))
    with pytest.raises(BackendUnavailable, match="connection reset"), target.writer(run_id="r") as writer:
        writer.write_text("a.txt", "a")
        writer.write_text("b.txt", "b")
    assert staged(inner, target) == []
    assert not Artifact(inner, target.id).exists()


def test_staged_files_a_manifest_vouches_for_are_kept_when_only_the_answer_was_lost(store_root):
    inner = open_store(store_root)
    store = EdgeFailure(inner, BackendUnavailable("read timeout", backend="test"), after_taking=True)
    target = Artifact(store, address("lost-answer"))
    writer = target.writer(run_id="r")
    writer.write_text("a.txt", "kept")
    with pytest.raises(BackendUnavailable, match="read timeout"):
        writer.publish()
    assert Artifact(inner, target.id).read_text("a.txt") == "kept"


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (needs root and mount rights; skipped elsewhere)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> None:
    """Take every free byte of the file system holding ``folder`` (unbuffered: no write is left for later)."""
    fd = os.open(folder / f"filler-{uuid.uuid4().hex}", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)


def test_enospc_while_publishing_raises_enospc_and_removes_the_staging(tiny_disk):
    store = open_store(str(tiny_disk / "artifacts"))
    target = Artifact(store, address("full"))
    writer = target.writer(run_id="r")
    writer.write_text("data.txt", "x" * 10_000)
    fill(tiny_disk)
    assert staged(store, target), "staged before publishing"
    with pytest.raises(OSError) as raised, writer:
        pass  # a clean exit publishes: creating the manifest finds the disk full
    assert raised.value.errno == errno.ENOSPC
    assert staged(store, target) == []
    assert not target.exists()
    assert not any(name.endswith(".tmp") for _, _, files in os.walk(tiny_disk / "artifacts") for name in files)
