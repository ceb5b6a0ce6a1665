"""Text to numbers: Unicode word tokens, hashed into a fixed number of features.

The hash is BLAKE2b keyed with the seed, never Python's ``hash()``: the same text gives the same
features in every process, on every machine, whatever ``PYTHONHASHSEED`` is. That is what lets one
``process-text`` artifact serve every training, and serving reproduce the training features.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["hash_vectorize", "text_features", "tokenize"]

_WORD = re.compile(r"\w+")


def tokenize(text: str | None) -> list[str]:
    """Lower-cased Unicode word tokens (runs of ``\\w``) of ``text``; ``None`` and ``""`` give ``[]``."""
    if not text:
        return []
    return _WORD.findall(text.lower())


def _bucket(token: str, n_features: int, key: bytes) -> int:
    """The feature index of ``token``: BLAKE2b of its UTF-8 bytes, keyed with the seed."""
    digest = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little") % n_features


def _hash_key(seed: int) -> bytes:
    return f"caravan.text:{seed}".encode()


def _vectorize(texts: Iterable[str | None], n_rows: int, n_features: int, seed: int) -> np.ndarray:
    """Term counts per hashed bucket, rows L2-normalised; the work shared by the public functions."""
    if n_features < 1:
        raise ValueError(f"n_features must be >= 1, not {n_features}")
    key = _hash_key(seed)
    buckets: dict[str, int] = {}  # token -> bucket, so each distinct token is hashed once
    flat: list[int] = []
    for row, text in enumerate(texts):
        if not text:
            continue
        for token in _WORD.findall(text.lower()):
            index = buckets.get(token)
            if index is None:
                index = buckets[token] = _bucket(token, n_features, key)
            flat.append(row * n_features + index)
    counts = np.bincount(np.asarray(flat, dtype=np.int64), minlength=n_rows * n_features)
    matrix = counts.reshape(n_rows, n_features).astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    np.divide(matrix, norms[:, None], out=matrix, where=norms[:, None] > 0)
    return matrix.astype(np.float32)


def hash_vectorize(texts: Sequence[str | None], n_features: int, seed: int = 0) -> np.ndarray:
    """Hashed bag-of-words: a float32 matrix (len(texts), n_features) of L2-normalised term counts.

    Each token of :func:`tokenize` goes to bucket ``blake2b(token, key=seed) % n_features``
    (no sign trick: features are non-negative). Rows without tokens stay all zero. Stable across
    processes and ``PYTHONHASHSEED`` values; another ``seed`` gives another (independent) hashing.
    """
    return _vectorize(texts, len(texts), n_features, seed)


def text_features(table: pa.Table, column: str, n_features: int, prefix: str | None = None,
                  seed: int = 0) -> pa.Table:
    """Hashed features of one text column: float32 columns ``{prefix or column}_h{i}``, same rows and order.

    Distinct texts are vectorised once (titles repeat a lot), so a million short titles take seconds.
    Nulls give all-zero rows. Non-string columns are cast to strings first.
    """
    if column not in table.column_names:
        raise ValueError(f"text column {column!r} is not in the table (columns: {table.column_names})")
    values = table[column]
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        values = values.cast(pa.string())
    name = prefix or column
    names = [f"{name}_h{i}" for i in range(n_features)]
    if table.num_rows == 0:
        _vectorize([], 0, n_features, seed)  # validates n_features
        return pa.table({n: pa.array([], type=pa.float32()) for n in names})
    encoded = pc.dictionary_encode(values.combine_chunks())
    distinct = encoded.dictionary.to_pylist()
    unique_matrix = _vectorize(distinct, len(distinct), n_features, seed)
    # Row i takes the vector of its distinct text; nulls point at an extra all-zero row.
    indices = encoded.indices.fill_null(len(distinct)).to_numpy(zero_copy_only=False).astype(np.intp)
    unique_matrix = np.vstack([unique_matrix, np.zeros((1, n_features), dtype=np.float32)])
    by_feature = np.ascontiguousarray(unique_matrix.T)
    return pa.table({n: pa.array(by_feature[i][indices], type=pa.float32()) for i, n in enumerate(names)})
