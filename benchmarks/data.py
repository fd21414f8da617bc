"""Benchmark of the data pipeline: prepare's tokens/s and the training loader's tokens/s.

    python -m benchmarks.data [--megabytes 64] [--workers 1 2] [--batch-size 32] [--seq-len 1024]

Prepare reads a local .jsonl corpus made of the built-in corpus's text (cut into ~4 KB documents,
repeated up to --megabytes) and tokenises it with GPT-2 BPE, once per worker count. The loader then
draws --steps batches from the shards, with and without BOS alignment and background prefetch, and
its rate is set against what training consumes (--train-tokens-per-s, by default the fastest rate
measured so far: a 49M-parameter GPT on one H200, 656k tokens/s). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from data.builtin_corpus import load_works
from data.loader import TokenLoader
from data.meta import read_meta
from data.prepare import prepare_dataset


def write_corpus(path: Path, megabytes: float, doc_chars: int = 4000) -> int:
    """Write a .jsonl corpus of about `megabytes` MB; return its number of documents."""
    texts = [text for _, text in load_works()]
    pieces = [t[i:i + doc_chars] for t in texts for i in range(0, len(t), doc_chars)]
    target, written, count = megabytes * 1e6, 0, 0
    with open(path, "w") as f:
        while written < target:
            for piece in pieces:
                f.write(json.dumps({"text": piece}) + "\n")
                written += len(piece)
                count += 1
                if written >= target:
                    break
    return count


def bench_prepare(root: Path, corpus: Path, workers: int, tokenizer: str) -> tuple[float, int, Path]:
    cfg = dict(name="bench", source="local", tokenizer=tokenizer, dir=str(root / f"{tokenizer}_w{workers}"),
               paths=[str(corpus)], workers=workers, val_fraction=0.01, shard_tokens=10_000_000)
    start = time.perf_counter()
    shard_dir = prepare_dataset(cfg, progress=False)
    seconds = time.perf_counter() - start
    tokens = sum(s["tokens"] for s in read_meta(shard_dir)["splits"].values())
    return seconds, tokens, shard_dir


def bench_loader(shard_dir: Path, batch_size: int, seq_len: int, steps: int, bos_aligned: bool,
                 prefetch: int) -> float:
    start = time.perf_counter()
    loader = TokenLoader(shard_dir, "train", batch_size, seq_len, bos_aligned=bos_aligned, prefetch=prefetch)
    setup = time.perf_counter() - start
    loader.next_batch()  # first batch: starts the prefetch thread
    start = time.perf_counter()
    for _ in range(steps):
        loader.next_batch()
    rate = steps * batch_size * seq_len / (time.perf_counter() - start)
    loader.close()
    return rate, setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=64.0, help="corpus size to tokenise")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="tokeniser process counts")
    parser.add_argument("--tokenizer", default="gpt2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--train-tokens-per-s", type=float, default=656e3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        root = Path(tmp)
        corpus = root / "corpus.jsonl"
        documents = write_corpus(corpus, args.megabytes)
        print(f"## prepare: {corpus.stat().st_size / 1e6:.0f} MB of .jsonl, {documents:,} documents, "
              f"tokenizer {args.tokenizer}\n")
        print("| workers | tokens | seconds | tokens/s |\n|---|---|---|---|")
        shard_dir = None
        for workers in args.workers:
            seconds, tokens, shard_dir = bench_prepare(root, corpus, workers, args.tokenizer)
            print(f"| {workers} | {tokens:,} | {seconds:.1f} | {tokens / seconds:,.0f} |", flush=True)
        assert shard_dir is not None
        print(f"\n## loader: batch {args.batch_size} x {args.seq_len} tokens, {args.steps} batches, "
              f"against training at {args.train_tokens_per_s:,.0f} tokens/s\n")
        print("| windows | prefetch | set-up s | tokens/s | x training |\n|---|---|---|---|---|")
        for bos_aligned in (False, True):
            for prefetch in (0, 2):
                rate, setup = bench_loader(shard_dir, args.batch_size, args.seq_len, args.steps,
                                           bos_aligned, prefetch)
                print(f"| {'BOS-aligned' if bos_aligned else 'tiled'} | {prefetch} | {setup:.2f} | "
                      f"{rate:,.0f} | {rate / args.train_tokens_per_s:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
