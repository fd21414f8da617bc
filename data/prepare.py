"""Text source → token shards: `python -m data.prepare CONFIG [key=value ...]`.

CONFIG names a file of conf/data/ (builtin, local, fineweb_edu) or is a path to such a YAML file;
`key=value` pairs override its keys (a `data.` prefix is accepted, as in training commands):

    python -m data.prepare fineweb_edu workers=16
    python -m data.prepare local paths='[corpus/*.jsonl]' dir=data/cache/shards/mine

Documents are tokenised in worker processes, each followed by the end-of-text token, and go to the
validation split when data.sources.is_validation says so (whole documents); a source too small for
that rule to hold out any document (with val_fraction > 0 and at least two documents) gives its last
document to validation instead. Shards fill up to `shard_tokens` tokens (data.writer).

The shards are written into `<dir>.partial/`, which is renamed to `<dir>` once complete (meta.json is
written last, before the rename), so `<dir>` never holds an unfinished preparation. The run records its
progress after every shard it finishes; run the same command again after an interruption (Ctrl-C, a lost
stream) and it resumes where the record ends, leaving finished shards untouched. A run that fails on bad
input (or before any progress was recorded) removes the folder it made. Errors are one line
`error: ...` with exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import itertools
import json
import multiprocessing
import os
import shlex
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

from data.config import DataConfig
from data.files import atomic_write_json, fsync_dir
from data.meta import META_NAME, read_meta
from data.paths import CACHE_DIR, PROJECT_ROOT
from data.shards import dtype_for_vocab, version_for_dtype
from data.sources import Source, is_validation, make_source
from data.tokenizer import get_tokenizer
from data.writer import ShardWriter

CONF_DIR = PROJECT_ROOT / "conf" / "data"
PROGRESS_NAME = "progress.json"
SPLITS = ("train", "val")


@dataclasses.dataclass
class _Chunk:
    first: int  # source index of the first document
    texts: list[str]
    state: dict | None  # the source's state after the last document


def _chunks(source: Source, start: int, state: dict | None, size: int) -> Iterator[_Chunk]:
    documents = source.documents(start, state)
    while texts := list(itertools.islice(documents, size)):
        yield _Chunk(start, texts, source.state())
        start += len(texts)


_ENCODING: Any = None


def _init_worker(tokenizer: str, cache_dir: str) -> None:
    global _ENCODING
    _ENCODING = get_tokenizer(tokenizer, Path(cache_dir))


def _tokenize(texts: list[str], dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens of all documents, each followed by end-of-text; tokens per document). Empty
    documents give no token at all."""
    eot = _ENCODING.eot_token
    pieces = [np.array(_ENCODING.encode_ordinary(t) + [eot], dtype=dtype) if t else np.zeros(0, dtype)
              for t in texts]
    lengths = np.array([p.size for p in pieces], dtype=np.int64)
    return (np.concatenate(pieces) if pieces else np.zeros(0, dtype)), lengths


def _tokenized(chunks: Iterable[_Chunk], tokenizer: str, cache_dir: Path, dtype: str,
               workers: int) -> Iterator[tuple[_Chunk, np.ndarray, np.ndarray]]:
    """Tokenise chunks in `workers` processes (in this one when workers == 1), in order, with a
    bounded number of chunks in flight so that a stream of any length fits in memory."""
    if workers == 1:
        _init_worker(tokenizer, str(cache_dir))
        for chunk in chunks:
            yield chunk, *_tokenize(chunk.texts, dtype)
        return
    context = multiprocessing.get_context("spawn")  # safe even when CUDA or threads are running
    with context.Pool(workers, initializer=_init_worker, initargs=(tokenizer, str(cache_dir))) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append((chunk, pool.apply_async(_tokenize, (chunk.texts, dtype))))
            if len(pending) >= 2 * workers:
                done, result = pending.popleft()
                yield done, *result.get()
        while pending:
            done, result = pending.popleft()
            yield done, *result.get()


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on `directory` (other ranks or runs wait for it)."""
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _override(key: str, value: Any) -> str:
    """`data.<key>=<value>` as a command-line override (shell-quoted when it needs to be)."""
    if isinstance(value, (list, tuple)):
        text = "[" + ",".join(str(v) for v in value) + "]"
    else:
        text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return shlex.quote(f"data.{key}={text}")


def _check_settings(recorded: Mapping[str, Any], wanted: Mapping[str, Any], where: Path, reading: bool) -> None:
    """ValueError naming every key of `wanted` whose value differs from the folder's `recorded` one, and
    the overrides that would use the folder as it is. `reading`: the folder is only read (training,
    evaluation), else it is being prepared (data.prepare)."""
    differ = [key for key in wanted if recorded.get(key) != wanted[key]]
    if differ:
        found = ", ".join(f"{key}={recorded.get(key)!r} (config: {wanted[key]!r})" for key in differ)
        use = " ".join(_override(key, recorded.get(key)) for key in differ)
        other = "point data.dir elsewhere" if reading else "delete the folder (or choose another dir) to prepare it again"
        raise ValueError(f"{where} was prepared with {found}: pass {use} to {'read' if reading else 'use'} it "
                         f"as it is, or {other}")


def _fresh_record(cfg: DataConfig, source: Source) -> dict[str, Any]:
    return {"settings": cfg.settings(), "source": source.describe(), "documents": 0,
            "source_state": None, "empty_documents": 0,
            "splits": {split: {"sealed": [], "partial_tokens": 0, "documents": 0} for split in SPLITS}}


def _load_record(shard_dir: Path, cfg: DataConfig, source: Source) -> dict[str, Any]:
    """The progress record of an interrupted run in `shard_dir`, or a fresh one."""
    path = shard_dir / PROGRESS_NAME
    if not path.exists():
        leftovers = sorted(p.name for p in shard_dir.glob("*.bin"))
        if leftovers:
            raise ValueError(f"{shard_dir} holds shards ({leftovers[0]}, ...) but no progress record: "
                             f"delete the folder or choose another data.dir")
        return _fresh_record(cfg, source)
    record = json.loads(path.read_text())
    _check_settings(record["settings"], cfg.settings(), shard_dir, reading=False)
    if record["source"] != source.describe():
        raise ValueError(f"the source changed since the interrupted run in {shard_dir} (files or "
                         f"sizes differ): restore it, or delete the folder to start again")
    return record


def work_dir(shard_dir: Path) -> Path:
    """The folder an unfinished preparation of `shard_dir` writes to (renamed to `shard_dir` when done)."""
    return shard_dir.with_name(shard_dir.name + ".partial")


def _adopt_unfinished(shard_dir: Path, work: Path) -> None:
    """`shard_dir` exists without meta.json: an empty folder is removed, an interrupted preparation
    of an earlier version (shards written in place, with a progress record) becomes the work folder;
    anything else is a ValueError."""
    if not shard_dir.is_dir():
        raise ValueError(f"{shard_dir} exists and is not a folder: choose another data.dir")
    entries = sorted(p.name for p in shard_dir.iterdir() if p.name != ".lock")
    if not entries:
        shutil.rmtree(shard_dir)
    elif (shard_dir / PROGRESS_NAME).exists() and not work.exists():
        os.replace(shard_dir, work)
    else:
        raise ValueError(f"{shard_dir} holds no finished preparation (no {META_NAME}; found {entries[0]}, ...): "
                         f"delete the folder or choose another data.dir")


def _only_lock(folder: Path) -> bool:
    return folder.is_dir() and all(p.name == ".lock" for p in folder.iterdir())


def prepare_dataset(data_cfg: DataConfig | Mapping[str, Any], progress: bool = True,
                    cache_dir: Path = CACHE_DIR) -> Path:
    """Tokenise the source that `data_cfg` describes into shards in its `dir`; return that folder.

    The shards are written in `work_dir(dir)`, renamed to `dir` when complete. Resumes an interrupted
    run; returns at once when the folder is already complete (after checking that it was made with the
    same settings). A failure on bad input (ValueError, TypeError, FileNotFoundError), or any failure
    before progress was recorded, removes the work folder when this call made it; otherwise it stays
    for the next call to resume. `progress` shows a bar with tokens/s.
    """
    cfg = data_cfg if isinstance(data_cfg, DataConfig) else DataConfig.from_mapping(data_cfg)
    shard_dir = cfg.shard_dir
    if not (shard_dir / META_NAME).exists():
        source = make_source(cfg, cache_dir)  # bad paths fail here, before any folder is made
        work = work_dir(shard_dir)
        if shard_dir.exists():
            _adopt_unfinished(shard_dir, work)
        made = not work.exists()
        work.mkdir(parents=True, exist_ok=True)
        try:
            with _locked(work):
                if not (shard_dir / META_NAME).exists():  # another process may have finished meanwhile
                    _prepare_locked(cfg, source, work, progress, Path(cache_dir))
                    os.replace(work, shard_dir)
                    fsync_dir(shard_dir.parent)
        except BaseException as err:
            bad_input = isinstance(err, (ValueError, TypeError, FileNotFoundError))
            if made and work.is_dir() and (bad_input or not (work / PROGRESS_NAME).exists()):
                shutil.rmtree(work, ignore_errors=True)
            raise
        finally:
            if _only_lock(work):  # another process finished while this one waited
                shutil.rmtree(work, ignore_errors=True)
        (shard_dir / ".lock").unlink(missing_ok=True)
    _check_settings(read_meta(shard_dir)["settings"], cfg.settings(), shard_dir, reading=False)
    return shard_dir


def _prepare_locked(cfg: DataConfig, source: Source, shard_dir: Path, progress: bool, cache_dir: Path) -> None:
    enc = get_tokenizer(cfg.tokenizer, cache_dir)
    dtype = dtype_for_vocab(enc.n_vocab, cfg.dtype)
    record = _load_record(shard_dir, cfg, source)
    chunks = _chunks(source, record["documents"], record["source_state"], cfg.chunk_docs)
    first = next(chunks, None)
    if first is None and record["documents"] == 0:
        raise ValueError(f"the source holds no document ({_describe(cfg)})")
    writers = {split: ShardWriter(shard_dir, split, cfg.shard_tokens, dtype, record["splits"][split])
               for split in SPLITS}

    def checkpoint() -> None:
        for split, writer in writers.items():
            writer.sync()
            record["splits"][split].update(writer.state())
        atomic_write_json(shard_dir / PROGRESS_NAME, record)
        for writer in writers.values():
            writer.publish()

    workers = cfg.workers or len(os.sched_getaffinity(0))
    done_tokens = sum(w.tokens for w in writers.values())
    started = time.perf_counter()
    bar = tqdm(total=cfg.expected_tokens, initial=done_tokens, unit="tok", unit_scale=True,
               desc=f"prepare {cfg.name}", disable=not progress, smoothing=0.05)
    stream = itertools.chain([first], chunks) if first is not None else iter(())
    for chunk, tokens, lengths in _tokenized(stream, cfg.tokenizer, cache_dir, dtype.name, workers):
        is_val = np.array([is_validation(chunk.first + j, cfg.val_fraction)
                           for j in range(lengths.size)], dtype=bool)
        token_is_val = np.repeat(is_val, lengths)
        writers["val"].append(tokens[token_is_val])
        writers["train"].append(tokens[~token_is_val])
        for split, mask in (("val", is_val), ("train", ~is_val)):
            record["splits"][split]["documents"] += int(np.count_nonzero(mask & (lengths > 0)))
        record["empty_documents"] += int(np.count_nonzero(lengths == 0))
        if np.any(lengths > 0):
            record["last_document_tokens"] = int(lengths[lengths > 0][-1])
        record["documents"] = chunk.first + lengths.size
        record["source_state"] = chunk.state
        bar.update(tokens.size)
        if any(w.has_unpublished for w in writers.values()):
            checkpoint()
    bar.close()
    if _last_document_to_validation(record, writers, cfg):
        checkpoint()
    for writer in writers.values():
        writer.finish()
    checkpoint()
    _check_splits(record, cfg)
    _write_meta(shard_dir, cfg, enc, dtype, record, writers)
    (shard_dir / PROGRESS_NAME).unlink()
    if progress:
        new = sum(w.tokens for w in writers.values()) - done_tokens
        elapsed = time.perf_counter() - started
        print(f"tokenised {new:,} tokens in {elapsed:.1f} s ({new / max(elapsed, 1e-9):,.0f} tokens/s, "
              f"{workers} worker processes)", file=sys.stderr)


def _describe(cfg: DataConfig) -> str:
    if cfg.source == "local":
        return f"paths={list(cfg.paths)}"
    if cfg.source == "hub":
        return f"hub_path={cfg.hub_path}, hub_config={cfg.hub_config}, hub_split={cfg.hub_split}"
    return "the built-in corpus"


def _last_document_to_validation(record: dict[str, Any], writers: dict[str, ShardWriter], cfg: DataConfig) -> bool:
    """When val_fraction > 0 held out no document (a source of fewer than about 1/(2·val_fraction)
    documents) and at least two documents went to training, move the last one (the end of the training
    split) to validation; whether it did. Not possible when that document reaches back into a finished
    shard (then _check_splits says what to do)."""
    splits = record["splits"]
    if cfg.val_fraction <= 0 or splits["val"]["documents"] or splits["train"]["documents"] < 2:
        return False
    tail = writers["train"].take_tail(int(record.get("last_document_tokens", 0)))
    if tail is None:
        return False
    writers["val"].append(tail)
    splits["train"]["documents"] -= 1
    splits["val"]["documents"] += 1
    record["last_document_to_validation"] = True
    return True


def _check_splits(record: dict[str, Any], cfg: DataConfig) -> None:
    splits = record["splits"]
    if sum(splits["train"]["sealed"]) == 0:
        raise ValueError(f"the source holds no text for the training split ({_describe(cfg)})")
    if cfg.val_fraction > 0 and splits["val"]["documents"] == 0:
        documents = splits["train"]["documents"]
        if documents < 2:
            raise ValueError(f"no document went to validation: the source holds {documents} document(s) with "
                             f"text ({_describe(cfg)}); add documents, or pass val_fraction=0 to prepare "
                             f"without a validation split")
        raise ValueError(f"no document went to validation: {documents} documents with "
                         f"val_fraction={cfg.val_fraction}, and the last one does not fit in the last shard "
                         f"(shard_tokens={cfg.shard_tokens}); pass val_fraction=1/{documents} or more")


def _write_meta(shard_dir: Path, cfg: DataConfig, enc: Any, dtype: np.dtype, record: dict[str, Any],
                writers: dict[str, ShardWriter]) -> None:
    meta = {
        "tokenizer": cfg.tokenizer,
        "vocab_size": enc.n_vocab,
        "eot_token": enc.eot_token,
        "version": version_for_dtype(dtype),
        "dtype": dtype.name,
        "settings": record["settings"],
        "source": record["source"],
        "empty_documents": record["empty_documents"],
        "splits": {split: {"tokens": writer.tokens, "documents": record["splits"][split]["documents"],
                           "shards": writer.shards()} for split, writer in writers.items()},
    }
    atomic_write_json(shard_dir / META_NAME, meta)


def prepare_command(cfg: DataConfig) -> str:
    """The `python -m data.prepare ...` command line that prepares `cfg`'s shards."""
    from omegaconf import OmegaConf
    base = cfg.name if (CONF_DIR / f"{cfg.name}.yaml").exists() else cfg.source
    defaults = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{base}.yaml"), resolve=True)
    overrides = []
    for field in dataclasses.fields(DataConfig):
        value = getattr(cfg, field.name)
        value = list(value) if isinstance(value, tuple) else value
        default = defaults.get(field.name, field.default)
        if field.name != "bos_aligned" and value != (list(default) if isinstance(default, tuple) else default):
            overrides.append(f"{field.name}={value!r}" if isinstance(value, list) else f"{field.name}={value}")
    return " ".join(["python -m data.prepare", base, *overrides])


def ensure_prepared(data_cfg: DataConfig | Mapping[str, Any]) -> Path:
    """The shard folder of `data_cfg` (the `data` node of the training config), ready to read.

    The built-in corpus is fetched and tokenised here when its shards are missing; for other
    sources missing shards are a FileNotFoundError naming the command that prepares them. A prepared
    folder must hold the source and tokenizer `data_cfg` names (else a ValueError naming the
    overrides); how it was split and stored (val_fraction, shard_tokens, dtype) is taken from it.
    """
    cfg = data_cfg if isinstance(data_cfg, DataConfig) else DataConfig.from_mapping(data_cfg)
    if (cfg.shard_dir / META_NAME).exists():
        _check_settings(read_meta(cfg.shard_dir)["settings"], cfg.source_settings(), cfg.shard_dir, reading=True)
        return cfg.shard_dir
    if cfg.source == "builtin":
        return prepare_dataset(cfg)
    raise FileNotFoundError(f"no finished shards in {cfg.shard_dir}: run `{prepare_command(cfg)}` first")


def load_config(name_or_path: str, overrides: list[str]) -> DataConfig:
    """A DataConfig from a conf/data name (or a YAML path) and `key=value` overrides."""
    from omegaconf import OmegaConf
    path = Path(name_or_path)
    if not path.suffix:
        path = CONF_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        choices = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no data config {name_or_path!r}: use one of {choices} or a YAML path")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must look like key=value, got {bad}")
    parsed = []
    for override in overrides:
        try:
            parsed.append(OmegaConf.from_dotlist([override.removeprefix("data.")]))
        except Exception as err:  # yaml and omegaconf raise parser errors of their own types
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"cannot read the override {override!r}: {reason}") from err
    return DataConfig.from_mapping(OmegaConf.merge(OmegaConf.load(path), *parsed))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m data.prepare", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("config", help="a conf/data name (builtin, local, fineweb_edu) or a YAML path")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config's keys")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        shard_dir = prepare_dataset(cfg)
    except KeyboardInterrupt:
        raise SystemExit("interrupted: run the same command again to resume") from None
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, ImportError, OmegaConfBaseException) as err:
        print("error: " + " ".join(line.strip() for line in str(err).splitlines() if line.strip()),
              file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    meta = read_meta(shard_dir)
    print(f"{shard_dir}: " + ", ".join(f"{s} {v['tokens']:,} tokens" for s, v in meta["splits"].items())
          + f"; tokenizer {meta['tokenizer']} (vocabulary {meta['vocab_size']})")


if __name__ == "__main__":
    main()
