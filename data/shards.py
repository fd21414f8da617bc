"""The token-shard file format.

A shard is a header of 256 little-endian int32 followed by the tokens:

    header[0] = 20240520     magic number
    header[1] = 1 or 2       version: 1 = uint16 tokens, 2 = uint32 tokens (vocabularies over 65,536)
    header[2] = N            number of tokens that follow (bytes after the header = N * itemsize)
    header[3:] = 0

Version 1 is the nanoGPT/llm.c shard layout, so shards from those tools load here too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAGIC = 20240520
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_SHARD_TOKENS = 2**31 - 1  # the count is an int32
VERSION_DTYPES: dict[int, np.dtype] = {1: np.dtype("<u2"), 2: np.dtype("<u4")}


def dtype_for_vocab(vocab_size: int, requested: str = "auto") -> np.dtype:
    """Token dtype for a vocabulary of `vocab_size` ids (0 .. vocab_size-1).

    `requested` is "auto" (uint16 when every id fits, else uint32), "uint16" or "uint32"; a
    vocabulary that does not fit the requested dtype is a ValueError.
    """
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if requested == "auto":
        return VERSION_DTYPES[1] if vocab_size - 1 <= np.iinfo(np.uint16).max else VERSION_DTYPES[2]
    choices = {str(dt.name): dt for dt in VERSION_DTYPES.values()}
    if requested not in choices:
        raise ValueError(f"dtype must be 'auto', 'uint16' or 'uint32', got {requested!r}")
    dtype = choices[requested]
    if vocab_size - 1 > np.iinfo(dtype).max:
        raise ValueError(f"a vocabulary of {vocab_size} tokens does not fit dtype={requested} "
                         f"(largest id {np.iinfo(dtype).max}); use dtype=auto or uint32")
    return dtype


def version_for_dtype(dtype: np.dtype) -> int:
    """Header version that stores tokens of `dtype`."""
    for version, dt in VERSION_DTYPES.items():
        if dt == np.dtype(dtype).newbyteorder("<"):
            return version
    raise ValueError(f"no shard version stores tokens of dtype {dtype}")


def make_header(version: int, n_tokens: int) -> bytes:
    """The 1024-byte header of a shard holding `n_tokens` tokens."""
    if version not in VERSION_DTYPES:
        raise ValueError(f"version must be one of {sorted(VERSION_DTYPES)}, got {version!r}")
    if not 0 <= n_tokens <= MAX_SHARD_TOKENS:
        raise ValueError(f"n_tokens must be in [0, {MAX_SHARD_TOKENS}], got {n_tokens}")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, version, n_tokens)
    return header.tobytes()


def read_header(path: Path) -> tuple[np.dtype, int]:
    """Check the shard at `path` and return (token dtype, token count).

    Raises ValueError naming the file when the file is shorter than a header, the magic number or
    version is wrong, or the token count disagrees with the file's size.
    """
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ValueError(f"{path}: {size} bytes, shorter than the {HEADER_BYTES}-byte shard header")
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(HEADER_BYTES), dtype="<i4")
    if header[0] != MAGIC:
        raise ValueError(f"{path}: magic number {header[0]}, expected {MAGIC}: not a token shard")
    version = int(header[1])
    if version not in VERSION_DTYPES:
        raise ValueError(f"{path}: shard version {version} is not supported (known: {sorted(VERSION_DTYPES)})")
    dtype = VERSION_DTYPES[version]
    n_tokens = int(header[2])
    if n_tokens < 0 or size - HEADER_BYTES != n_tokens * dtype.itemsize:
        raise ValueError(f"{path}: header says {n_tokens} tokens but the file holds "
                         f"{(size - HEADER_BYTES) / dtype.itemsize:g} (truncated or corrupt shard)")
    return dtype, n_tokens


def open_shard(path: Path) -> np.memmap:
    """The tokens of the shard at `path`, memory-mapped read-only (1-D, uint16 or uint32)."""
    dtype, n_tokens = read_header(path)
    if n_tokens == 0:
        return np.zeros(0, dtype=dtype)  # numpy cannot map zero bytes
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(n_tokens,))

