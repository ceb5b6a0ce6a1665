"""Artifact addresses: the path is the version.

An artifact lives at ``{TaskFamily}/{partition}/{readable params}--{digest}`` under the
store's root. Every segment is escaped so that any parameter value gives one safe path
segment; the digest is a hash of everything that determines the artifact's content, so
different inputs never share an address and the same inputs always get the same one.

The escape character is ``~`` (``~XX`` per UTF-8 byte), not ``%``: a key holds only RFC 3986
unreserved characters and ``=``, ``,`` and ``/``, so it is its own URI path, and every tool
(pyarrow, fsspec, pandas, a browser) that decodes ``%XX`` in a ``file://`` or ``s3://`` URI opens
exactly the folder caravan wrote. (Keys made before this rule used ``%XX``; such an artifact gets a new
path, the same digest, and is rebuilt once.)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Characters left as they are in a segment: RFC 3986 unreserved ones but ``~``, which escapes every
#: other character as ``~XX`` per UTF-8 byte. ``=`` and ``,`` separate keys, values and pairs.
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
ESCAPE = "~"
_ESCAPED = re.compile(r"(?:~[0-9A-F]{2})+")
#: Readable part budget, in bytes: a segment must stay under the 255-byte limit of common
#: filesystems with room for ``--`` and the digest; S3 keys allow 1024 bytes in all.
MAX_READABLE_BYTES = 160
DIGEST_CHARS = 16
MANIFEST_NAME = "_MANIFEST.json"


def escape(value: str) -> str:
    """Escape ``value`` into characters that are safe in any path segment and mean the same in any URI."""
    out = []
    for ch in value:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend(f"{ESCAPE}{byte:02X}" for byte in ch.encode("utf-8"))
    escaped = "".join(out)
    # "." and ".." are the only all-safe strings with a meaning of their own in a path.
    if escaped in (".", ".."):
        escaped = escaped.replace(".", f"{ESCAPE}2E")
    return escaped


def unescape(segment: str) -> str:
    """The value :func:`escape` was given (for display; a shortened readable part stays cut)."""
    return _ESCAPED.sub(lambda m: bytes.fromhex(m.group(0).replace(ESCAPE, "")).decode("utf-8", "replace"), segment)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and fixed separators: field order never changes a digest."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _shorten(readable: str, limit: int = MAX_READABLE_BYTES) -> str:
    """Cut ``readable`` to ``limit`` bytes without splitting a ``~XX`` escape; mark the cut with a lone ``~``."""
    if len(readable) <= limit:  # escaped text is ASCII: characters are bytes
        return readable
    cut = readable[: limit - 1]
    tail = cut.rfind(ESCAPE)
    if tail >= len(cut) - 2:
        cut = cut[:tail]
    return cut + "~"


@dataclass(frozen=True)
class Address:
    """Where an artifact lives and what identifies it.

    ``params`` are the significant parameters serialised by their luigi parameter,
    ``upstream`` the artifact ids of everything the task requires, in the shape
    ``requires()`` returned them (a dict, list or single id).
    """

    family: str
    params: Mapping[str, str]
    upstream: Any = None
    code_version: str = "1"
    partition_key: str | None = None
    #: Parameters the path shows (default: all); the digest covers every parameter regardless.
    readable_keys: tuple[str, ...] | None = None
    digest: str = field(init=False)
    key: str = field(init=False)

    def __post_init__(self) -> None:
        if self.partition_key is not None and self.partition_key not in self.params:
            raise ValueError(f"partition parameter {self.partition_key!r} is not among {sorted(self.params)}")
        identity = canonical_json(self.identity())
        digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:DIGEST_CHARS]
        object.__setattr__(self, "digest", digest)
        segments = [escape(self.family)]
        if self.partition_key is not None:
            segments.append(f"{escape(self.partition_key)}={escape(self.params[self.partition_key])}")
        readable = ",".join(
            f"{escape(name)}={escape(value)}"
            for name, value in sorted(self.params.items())
            if name != self.partition_key and (self.readable_keys is None or name in self.readable_keys)
        )
        segments.append(f"{_shorten(readable)}--{digest}" if readable else digest)
        object.__setattr__(self, "key", "/".join(segments))

    def identity(self) -> dict[str, Any]:
        """Everything the digest covers, as plain JSON-able data (also recorded in the manifest)."""
        return {
            "family": self.family,
            "params": dict(self.params),
            "upstream": self.upstream,
            "code_version": self.code_version,
        }

    @property
    def artifact_id(self) -> str:
        """The stable id: the address relative to any store root."""
        return self.key

    @property
    def prefix(self) -> str:
        """The listing prefix shared with sibling artifacts (family and partition)."""
        return self.key.rsplit("/", 1)[0] + "/"

    @property
    def name(self) -> str:
        """The last segment: readable parameters and digest."""
        return self.key.rsplit("/", 1)[1]

    @classmethod
    def from_identity(cls, identity: Mapping[str, Any], partition_key: str | None = None) -> Address:
        """Rebuild an address from :meth:`identity` output (e.g. a step checking its dispatch meta);
        an optional ``path_params`` entry says which parameters the path shows."""
        readable = identity.get("path_params")
        return cls(
            family=identity["family"],
            params={str(k): str(v) for k, v in identity["params"].items()},
            upstream=identity.get("upstream"),
            code_version=str(identity.get("code_version", "1")),
            partition_key=partition_key,
            readable_keys=tuple(readable) if readable is not None else None,
        )
