"""Tokenizers by name, all of them tiktoken Encodings.

- `bytes`: the 256 single bytes plus `<|endoftext|>` = 256 (vocabulary 257). Built in memory, needs
  no file; the quick start uses it.
- `gpt2`: GPT-2's BPE (vocabulary 50257, `<|endoftext|>` = 50256). Its merge ranks are read from
  `data/cache/tokenizers/gpt2.tiktoken`; when that file is missing it is taken from the PyPI source
  distribution of `openai-whisper`, which ships GPT-2's ranks in tiktoken's format (the same file as
  tiktoken's `r50k_base`, checked by its SHA-256), so only the package registry is needed.
- any other tiktoken name (`cl100k_base`, `o200k_base`, ...): `tiktoken.get_encoding`, with tiktoken's
  download cache pointed at `data/cache/tiktoken` (unless TIKTOKEN_CACHE_DIR is set), so that a cache
  filled on a machine with network can be copied to one without.

Run `python -m data.tokenizer NAME` to fetch and cache a tokenizer ahead of time.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
from pathlib import Path

import tiktoken
import tiktoken.load

from data.files import atomic_write_bytes
from data.paths import CACHE_DIR
from data.sdist import SdistDownloadError, fetch_sdist_members

ENDOFTEXT = "<|endoftext|>"

# GPT-2's pre-tokenisation pattern, as published with GPT-2's encoder.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_EOT = 50256
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_RANKS_SDIST = "openai-whisper==20250625"
GPT2_RANKS_MEMBER = "whisper/assets/gpt2.tiktoken"

# With byte-level ranks and no merges every piece encodes to its bytes, so the split pattern only
# bounds the piece length; it never changes the tokens.
BYTES_PATTERN = r"(?s:.{1,256})"


def _bytes_encoding() -> tiktoken.Encoding:
    return tiktoken.Encoding(
        name="bytes",
        pat_str=BYTES_PATTERN,
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={ENDOFTEXT: 256},
        explicit_n_vocab=257,
    )


def _gpt2_ranks_file(cache_dir: Path) -> Path:
    """Path of the cached GPT-2 ranks, fetching them from PyPI when they are missing."""
    path = cache_dir / "tokenizers" / "gpt2.tiktoken"
    if path.exists():
        if hashlib.sha256(path.read_bytes()).hexdigest() != GPT2_RANKS_SHA256:
            raise ValueError(f"{path} is not GPT-2's BPE ranks file (SHA-256 mismatch): delete it and "
                             f"run `python -m data.tokenizer gpt2` to fetch it again")
        return path
    try:
        members = fetch_sdist_members(GPT2_RANKS_SDIST, lambda name: name.endswith(GPT2_RANKS_MEMBER))
    except SdistDownloadError as err:
        raise RuntimeError(
            f"GPT-2's BPE ranks are not cached at {path} and could not be fetched ({err}). "
            f"On a machine that reaches PyPI run `python -m data.tokenizer gpt2` and copy data/cache/ "
            f"here, or put tiktoken's r50k_base.tiktoken file at {path}."
        ) from err
    if len(members) != 1:
        raise RuntimeError(f"{GPT2_RANKS_SDIST} no longer ships {GPT2_RANKS_MEMBER}; put tiktoken's "
                           f"r50k_base.tiktoken file at {path}")
    data = next(iter(members.values()))
    if hashlib.sha256(data).hexdigest() != GPT2_RANKS_SHA256:
        raise RuntimeError(f"the {GPT2_RANKS_MEMBER} of {GPT2_RANKS_SDIST} is not GPT-2's ranks (SHA-256 "
                           f"mismatch); put tiktoken's r50k_base.tiktoken file at {path}")
    atomic_write_bytes(path, data)
    return path


def _gpt2_encoding(cache_dir: Path) -> tiktoken.Encoding:
    ranks = tiktoken.load.load_tiktoken_bpe(str(_gpt2_ranks_file(cache_dir)), GPT2_RANKS_SHA256)
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: GPT2_EOT},
        explicit_n_vocab=GPT2_EOT + 1,
    )


def _tiktoken_encoding(name: str, cache_dir: Path) -> tiktoken.Encoding:
    known = tiktoken.list_encoding_names()
    if name not in known:
        raise ValueError(f"tokenizer {name!r} is unknown: use 'bytes', 'gpt2' or one of tiktoken's "
                         f"encodings {sorted(known)}")
    tiktoken_cache = os.environ.get("TIKTOKEN_CACHE_DIR") or str(cache_dir / "tiktoken")
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = tiktoken_cache
    try:
        return tiktoken.get_encoding(name)
    except Exception as err:  # tiktoken raises requests' errors, ValueError or OSError here
        raise RuntimeError(
            f"tiktoken could not load the encoding {name!r}: its file is not in {tiktoken_cache} and "
            f"could not be downloaded ({type(err).__name__}: {err}). On a machine with network run "
            f"`python -m data.tokenizer {name}` and copy data/cache/ here (or point TIKTOKEN_CACHE_DIR "
            f"at a folder holding tiktoken's cached files)."
        ) from err
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved


@functools.cache
def get_tokenizer(name: str, cache_dir: Path = CACHE_DIR) -> tiktoken.Encoding:
    """The tiktoken Encoding called `name` ('bytes', 'gpt2', or a tiktoken encoding name).

    Its end-of-text token is `enc.eot_token`, its vocabulary size `enc.n_vocab`. Files it needs are
    cached under `cache_dir` (default data/cache). Raises ValueError for an unknown name and
    RuntimeError, saying how to provide the files, when they can be neither found nor fetched.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"tokenizer must be a non-empty string, got {name!r}")
    cache_dir = Path(cache_dir)
    if name == "bytes":
        return _bytes_encoding()
    if name == "gpt2":
        return _gpt2_encoding(cache_dir)
    return _tiktoken_encoding(name, cache_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description="Fetch a tokenizer's files into data/cache and show it.")
    parser.add_argument("name", help="bytes, gpt2, or a tiktoken encoding name such as cl100k_base")
    try:
        enc = get_tokenizer(parser.parse_args().name)
    except (ValueError, RuntimeError) as err:
        raise SystemExit(f"error: {err}") from err
    print(f"{enc.name}: vocabulary {enc.n_vocab}, end-of-text token {enc.eot_token}, "
          f"'Hello world' -> {enc.encode_ordinary('Hello world')}")


if __name__ == "__main__":
    main()
