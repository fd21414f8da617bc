"""Decoding speed: ms per token end to end, attention µs per layer, bytes of cache read per token and the share of
value pages the threshold kernel read, with softmax measured in the same run.

    python -m benchmarks.decode                                       # 162M, random weights, softmax and TDA,
                                                                      # batch 1 and 16, cache of 1k … 32k tokens
    python -m benchmarks.decode --from-run runs/<name> --contexts 32768   # a trained run's own weights
    python -m benchmarks.decode --train-first "+experiment=paper_small attention=tda trainer.max_steps=1500" \\
        --contexts 32768                                              # train it first (python train.py ...)
    python -m benchmarks.decode --stages kernel --kernel-contexts 1024 8192 131072   # the kernels alone

**End to end** (stage ``e2e``), for every attention, batch and context: prompts of ``context − steps − warmup − 1``
tokens (random token ids; real text from the run's validation split for a trained run) are prefilled into a static
cache of ``context`` positions, the decoding step is captured as a CUDA graph (``--no-graphs``: eager) and run
``--warmup`` times, then ``--steps`` greedy steps are timed with CUDA events (ms per token, and the host's µs to
issue one). One more step runs eagerly with each layer's queries recorded, and flags recorded by the threshold
kernel: from them, the bytes of cache read per token (every visible key of every view; a threshold variant's
values only on the pages the kernel read, the others' all visible values) and the share of value pages read; then
the layers' ``decode_mix`` on those queries, captured in one graph and replayed, gives the attention's µs per layer.
Random weights: ``--model`` overrides (default ``model=gpt2_162m``) with ``attention=<name>``, GPT-2's vocabulary,
``--dtype`` weights. ``--from-run``: the run's weights at ``model.max_seq_len=--max-seq-len``; softmax beside it is
the same configuration with ``attention=softmax`` and random weights (softmax reads every key and value whatever its
weights, so its time and bytes do not depend on them). ``--train-first "<overrides>"`` runs ``python train.py
<overrides>`` into ``--runs-root`` first and benchmarks that run.

**Kernels alone** (stage ``kernel``): one layer of the 162M layout (TDA paired: 6 heads, q/k 64, v 128; softmax: 12
heads of 64; ``--kernel-heads 6`` gives paper_small's 3 and 6), random bf16 queries and keys (at β = 1 random unit
vectors leave about one survivor per row), caches up to ``--kernel-contexts`` (128k by default): the TDA kernel, our
softmax kernel, and torch's SDPA for one query with the flash, cuDNN (both on the cache sliced to the exact length,
as all rows are equally long here) and memory-efficient (a (B, 1, 1, L) length mask over the whole cache) backends;
"best softmax" is the fastest. ``--sweep`` also times both of our kernels at every page size (``--sweep-pages``),
pages per program (``--sweep-splits``) and pipeline depth (``--sweep-stages``) beside the launcher's own plan, the
table that chooses ``kernels/decode/launch.py``'s split plan and depth. ``--kernel-split`` also profiles a few
eager calls of each of our kernels (benchmarks.profile's kernel table) and reports the device µs per call of each
launch (the partials, the combine), to tell the time of the page pass from the rest.

Tables go to stdout (and ``--out`` as Markdown; ``--json`` the raw points), the end-to-end summary last. Runs on a
CUDA GPU; ``--device cpu`` runs the same steps with wall-clock timing (for trying the tool on a tiny model).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.runs import train_run
from benchmarks.decode_kernels import failure, kernel_table, kernels_alone, launch_table, sweep_table
from benchmarks.timing import Timer, time_replays
from kernels.decode import PAGE

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONTEXTS = [1024, 2048, 4096, 8192, 16384, 32768]
DEFAULT_KERNEL_CONTEXTS = [1024, 4096, 16384, 32768, 65536, 131072]
THRESHOLD_VARIANTS = ("tda", "tra", "rela")
GPT2_VOCAB = 50257
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", choices=["e2e", "kernel"], default=["e2e", "kernel"])
    parser.add_argument("--attentions", nargs="+", default=["softmax", "tda"])
    parser.add_argument("--model", nargs="*", default=["model=gpt2_162m"],
                        help="Hydra overrides of the random-weights model (conf/), e.g. model=gpt2_162m")
    parser.add_argument("--vocab-size", type=int, default=GPT2_VOCAB)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--contexts", nargs="+", type=int, default=DEFAULT_CONTEXTS,
                        help="cache lengths: prompt, warm-up and timed tokens together")
    parser.add_argument("--steps", type=int, default=32, help="timed decoding steps")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--no-graphs", action="store_true", help="run the decoding step eagerly")
    parser.add_argument("--from-run", type=Path, default=None, help="a run directory whose weights to decode with")
    parser.add_argument("--train-first", default=None, metavar="OVERRIDES",
                        help="train.py overrides: train this run first, then benchmark it")
    parser.add_argument("--runs-root", type=Path, default=Path("runs"), help="where --train-first writes its run")
    parser.add_argument("--max-seq-len", type=int, default=32768, help="model.max_seq_len of a run's model")
    parser.add_argument("--kernel-contexts", nargs="+", type=int, default=DEFAULT_KERNEL_CONTEXTS)
    parser.add_argument("--kernel-batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--kernel-heads", type=int, default=12,
                        help="softmax heads of 64 in the kernels-alone layer (TDA paired: half as many); 12 is the "
                             "162M model's, 6 paper_small's")
    parser.add_argument("--kernel-split", action="store_true",
                        help="kernel stage: also the device µs per call of each launch of our kernels (profiled)")
    parser.add_argument("--reps", type=int, default=20, help="graph replays timed per kernel measurement")
    parser.add_argument("--sweep", action="store_true",
                        help="kernel stage: also time both decoding kernels at every pages-per-split of "
                             "--sweep-splits, page of --sweep-pages and depth of --sweep-stages (the launcher's "
                             "own choice is a column of its own), to choose the split plan")
    parser.add_argument("--sweep-splits", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--sweep-pages", nargs="+", type=int, default=[32, 64, 128])
    parser.add_argument("--sweep-stages", nargs="+", type=int, default=[1, 2, 3, 4],
                        help="pipeline depths (pages in flight per program) the sweep tries")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here (Markdown)")
    parser.add_argument("--json", type=Path, default=None, help="also write every point here")
    args = parser.parse_args(argv)
    if args.from_run is not None and args.train_first is not None:
        parser.error("give --from-run or --train-first, not both")
    if args.kernel_heads < 2 or args.kernel_heads % 2:
        parser.error(f"--kernel-heads must be an even number >= 2 (TDA pairs them), got {args.kernel_heads}")
    if min(args.batches + args.kernel_batches) < 1 or args.steps < 1 or args.warmup < 0 or args.reps < 1:
        parser.error("batches, --steps and --reps must be >= 1, --warmup >= 0")
    for context in args.contexts:
        if context < args.steps + args.warmup + 2:
            parser.error(f"context {context} leaves no prompt: it must exceed --steps + --warmup + 1")
    return args


# ---------------------------------------------------------------------------------------------- what is counted


@dataclass
class CacheRead:
    """Bytes of cache one decoding step reads (all layers), and the threshold kernel's value pages read."""

    bytes: float = 0.0
    value_pages_read: int = 0
    value_pages_visited: int = 0

    @property
    def pages_read_share(self) -> float | None:
        return self.value_pages_read / self.value_pages_visited if self.value_pages_visited else None


def visible_keys(positions: list[int], page: int) -> list[list[int]]:
    """For each row (query at ``positions[b]``): the number of visible keys on each page it visits."""
    return [[min(page, pos + 1 - start) for start in range(0, pos + 1, page)] for pos in positions]


def dense_bytes(positions: list[int], widths: list[tuple[int, int]], element: int) -> float:
    """Bytes of reading every visible position of cache buffers of (heads, width) each, for rows at ``positions``."""
    per_position = sum(h * w for h, w in widths) * element
    return float(sum(pos + 1 for pos in positions) * per_position)


def threshold_bytes(positions: list[int], flags: torch.Tensor, key_widths: list[int], value_width: int,
                    element: int, page: int) -> CacheRead:
    """One layer of a threshold variant: every visible key of each view, and the visible values of the pages the
    kernel read (flags (B, H, pages): 1 keys only, 2 values too; one key/value head per query head)."""
    flags = flags.cpu()
    read = CacheRead()
    H = flags.shape[1]
    for b, counts in enumerate(visible_keys(positions, page)):
        keys = sum(counts)
        read.bytes += H * keys * sum(key_widths) * element
        counts_t = torch.tensor(counts, dtype=torch.float64)
        pages = flags[b, :, :len(counts)] == 2
        read.bytes += float((pages.double() * counts_t).sum()) * value_width * element
        read.value_pages_read += int(pages.sum())
        read.value_pages_visited += H * len(counts)
    return read


def value_pages_share(flags: list[torch.Tensor]) -> float | None:
    """Of the pages the threshold kernel visited (flag 1 or 2, all layers), the share whose values it read."""
    if not flags:
        return None
    visited = sum(int((f > 0).sum()) for f in flags)
    return sum(int((f == 2).sum()) for f in flags) / visited if visited else None


def ratio(value: float | None, reference: float | None) -> str:
    return "" if value is None or not reference else f"{value / reference:.2f}"


# ---------------------------------------------------------------------------------------------- models


def compose(overrides: list[str]):
    """The train config composed from conf/ with ``overrides`` (Hydra)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


def random_model(model_cfg, attn_cfg, vocab: int, device: torch.device, dtype: torch.dtype, seed: int):
    from model.gpt import GPT

    torch.manual_seed(seed)
    return GPT(model_cfg, attn_cfg, vocab).to(device=device, dtype=dtype).eval()


def train_first(overrides: str, runs_root: Path) -> Path:
    """Train ``python train.py <overrides>`` into ``runs_root`` (benchmarks.runs.train_run; named decode-bench-<time>
    unless the overrides name it) and return the run directory."""
    words = shlex.split(overrides)
    name = next((w.split("=", 1)[1] for w in words if w.startswith("name=")), f"decode-bench-{int(time.time())}")
    return train_run(runs_root / name, [w for w in words if not w.startswith("name=")])


def load_run(run_dir: Path, max_seq_len: int, device: torch.device, dtype: torch.dtype):
    """A run's model (newest checkpoint) with ``model.max_seq_len`` set to ``max_seq_len``; and its config."""
    from omegaconf import open_dict

    from model.checkpoint import build_model, latest_checkpoint, load_config

    cfg = load_config(run_dir)
    path = latest_checkpoint(run_dir)
    if path is None:
        raise SystemExit(f"{run_dir} has no complete checkpoint")
    with open_dict(cfg):
        cfg.model.max_seq_len = max_seq_len
    model = build_model(cfg)
    model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    return model.to(device=device, dtype=dtype).eval(), cfg


def text_prompts(cfg, batch: int, length: int, vocab: int, generator: torch.Generator) -> tuple[torch.Tensor, str]:
    """(batch, length) prompts of the run's text (validation split, else training split; rows from spread-out
    offsets, each after the end-of-text token for a BOS-aligned run), else random token ids; and which it is."""
    if cfg is not None:
        try:
            from data.tokenizer import get_tokenizer
            from data.windows import SplitTokens

            bos = [get_tokenizer(str(cfg.data.tokenizer)).eot_token] if cfg.data.get("bos_aligned", False) else []
            for split in ("val", "train"):
                tokens = SplitTokens(cfg.data.dir, split)
                need = length - len(bos)
                if tokens.n_tokens >= need:
                    step = max(1, (tokens.n_tokens - need) // max(1, batch))
                    rows = [bos + tokens.read(i * step, need).astype("int64").tolist() for i in range(batch)]
                    return torch.tensor(rows), f"{split} text"
        except (OSError, ValueError, KeyError) as exc:
            print(f"no text for prompts ({exc}); random token ids instead", flush=True)
    return torch.randint(vocab, (batch, length), generator=generator), "random tokens"


# ---------------------------------------------------------------------------------------------- end to end


@dataclass
class Point:
    model: str
    attention: str
    batch: int
    context: int
    prompts: str = ""
    weights: str = "random"
    ms_per_token: float | None = None
    host_us_per_token: float | None = None
    attention_us_per_layer: float | None = None
    cache_mb_per_token: float | None = None
    value_pages_read: float | None = None
    error: str | None = None


@contextlib.contextmanager
def recording(model):
    """Inside: each layer's ``decode_mix`` records its arguments, and the threshold kernel its page flags."""
    import kernels.decode as decode
    import model.attention.threshold as threshold  # where the threshold variants call threshold_decode

    calls, flags = [], []
    originals = {block.attn: block.attn.decode_mix for block in model.blocks}
    real_threshold = threshold.threshold_decode

    def flagged(q1, k1, v, q2=None, k2=None, **kwargs):
        if not decode.kernel_applies(q1, k1, v, q2, k2):
            return real_threshold(q1, k1, v, q2, k2, **kwargs)
        pages = torch.zeros(*q1.shape[:2], -(-k1.shape[2] // decode.PAGE), dtype=torch.int8, device=q1.device)
        flags.append(pages)
        return real_threshold(q1, k1, v, q2, k2, kernel=True, read_flags=pages, **kwargs)

    for attn, original in originals.items():
        def record(q, cache, positions, _original=original):
            calls.append((_original, q, cache, positions))
            return _original(q, cache, positions)

        attn.decode_mix = record
    threshold.threshold_decode = flagged
    try:
        yield calls, flags
    finally:
        threshold.threshold_decode = real_threshold
        for attn in originals:
            del attn.decode_mix


def measure_point(model, name: str, point: Point, prompt: torch.Tensor, args, device: torch.device) -> None:
    """Fill ``point`` for ``model`` decoding ``prompt`` (B, T) in a cache of ``point.context`` positions."""
    from model.generate import Decoder

    decoder = Decoder(model, prompt.shape[0], point.context, graphs=not args.no_graphs)
    timer = Timer(device)
    with torch.no_grad():
        token = decoder.prefill(prompt.to(device)).argmax(-1)
        for _ in range(args.warmup):
            token = decoder.step(token).argmax(-1)
        elapsed, host = [], 0.0
        with timer.region(elapsed):
            for _ in range(args.steps):
                t0 = time.perf_counter()
                logits = decoder.step(token)
                host += time.perf_counter() - t0
                token = logits.argmax(-1)
        point.ms_per_token = elapsed[0] / args.steps
        point.host_us_per_token = 1e6 * host / args.steps
        positions = decoder.cache.lengths.tolist()
        with recording(model) as (calls, flags):
            model.decode_step(token, decoder.cache)
        point.cache_mb_per_token = cache_bytes(decoder.cache, positions, flags, name) / 1e6
        point.value_pages_read = value_pages_share(flags)

        def attention_only():
            for original, q, cache, pos in calls:
                original(q, cache, pos)

        point.attention_us_per_layer = 1e3 * time_replays(attention_only, device, args.reps, inner=len(calls))
    del decoder


def cache_bytes(cache, positions: list[int], flags: list[torch.Tensor], name: str) -> float:
    """Bytes one step read from ``cache`` (all layers) for rows at ``positions``: with the threshold kernel's
    ``flags`` (one per layer), every view's keys and the values of the pages read; otherwise every visible key and
    value."""
    total = 0.0
    for i, layer in enumerate(cache.layers):
        element = layer.v.element_size()
        if flags and name in THRESHOLD_VARIANTS:
            total += threshold_bytes(positions, flags[i], [k.shape[-1] for k in layer.k], layer.v.shape[-1],
                                     element, PAGE).bytes
        else:
            widths = [(k.shape[1], k.shape[-1]) for k in layer.k] + [(layer.v.shape[1], layer.v.shape[-1])]
            total += dense_bytes(positions, widths, element)
    return total


def end_to_end(args, device: torch.device, dtype: torch.dtype, points: list[Point]) -> None:
    """Measure every end-to-end point, appending each to ``points`` as it is done."""
    from omegaconf import OmegaConf, open_dict

    run_dir = train_first(args.train_first, args.runs_root) if args.train_first else args.from_run
    generator = torch.Generator().manual_seed(args.seed)
    if run_dir is not None:
        trained, cfg = load_run(run_dir, args.max_seq_len, device, dtype)
        label = run_dir.name
        models = [(cfg.attention.name, lambda: trained, cfg)]
        if cfg.attention.name != "softmax":
            soft_model = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
            models.insert(0, ("softmax", lambda: random_model(soft_model, OmegaConf.create({"name": "softmax"}),
                                                             int(cfg.model.vocab_size), device, dtype, args.seed),
                              cfg))
        vocab = int(cfg.model.vocab_size)
    else:
        label = " ".join(args.model)
        vocab = args.vocab_size
        models = []
        for name in args.attentions:
            cfg = compose(list(args.model) + [f"attention={name}"])
            longest = max(args.contexts)
            with open_dict(cfg):
                cfg.model.max_seq_len = max(int(cfg.model.max_seq_len), longest)
            models.append((name, lambda cfg=cfg: random_model(cfg.model, cfg.attention, vocab, device, dtype,
                                                              args.seed), None))
    for name, build, run_cfg in models:
        model = build()
        for batch in args.batches:
            for context in args.contexts:
                point = Point(label, name, batch, context, weights="trained" if build_is_trained(run_cfg, name)
                              else "random")
                prompt, point.prompts = text_prompts(run_cfg, batch, context - args.steps - args.warmup - 1, vocab,
                                                     generator)
                try:
                    measure_point(model, name, point, prompt, args, device)
                except Exception as exc:  # a failed point is a row of the table; the others still run
                    point.error = failure(exc)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                points.append(point)
                print(point_line(point), flush=True)
        del model


def build_is_trained(run_cfg, name: str) -> bool:
    """Whether the model benchmarked as ``name`` has a run's weights (a run's own attention), not random ones."""
    return run_cfg is not None and run_cfg.attention.name == name


def point_line(p: Point) -> str:
    if p.error:
        return f"{p.attention} batch {p.batch} context {p.context}: {p.error}"
    pages = f", value pages read {p.value_pages_read:.1%}" if p.value_pages_read is not None else ""
    return (f"{p.attention} batch {p.batch} context {p.context}: {p.ms_per_token:.3f} ms/token "
            f"(host {p.host_us_per_token:.0f} us), attention {p.attention_us_per_layer:.1f} us/layer, "
            f"cache {p.cache_mb_per_token:.1f} MB/token{pages}")


def e2e_table(points: list[Point]) -> str:
    """Markdown: one row per point, with the ratios to softmax at the same model, batch and context."""
    soft = {(p.model, p.batch, p.context): p for p in points if p.attention == "softmax" and not p.error}
    lines = ["| model | attention | weights | batch | context | prompts | ms/token | host µs/token | "
             "attention µs/layer | cache MB/token | value pages read | ms vs softmax | attention vs softmax | "
             "bytes vs softmax |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        if p.error:
            lines.append(f"| {p.model} | {p.attention} | {p.weights} | {p.batch} | {p.context} | {p.prompts} | "
                         f"{p.error} | | | | | | | |")
            continue
        ref = soft.get((p.model, p.batch, p.context))
        pages = f"{p.value_pages_read:.1%}" if p.value_pages_read is not None else ""
        lines.append(
            f"| {p.model} | {p.attention} | {p.weights} | {p.batch} | {p.context} | {p.prompts} | "
            f"{p.ms_per_token:.3f} | "
            f"{p.host_us_per_token:.0f} | {p.attention_us_per_layer:.1f} | {p.cache_mb_per_token:.1f} | {pages} | "
            f"{ratio(p.ms_per_token, ref and ref.ms_per_token)} | "
            f"{ratio(p.attention_us_per_layer, ref and ref.attention_us_per_layer)} | "
            f"{ratio(p.cache_mb_per_token, ref and ref.cache_mb_per_token)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks.decode needs a CUDA GPU (or --device cpu for a try on a tiny model)")
    dtype = DTYPES[args.dtype]
    results = {"args": {k: str(v) for k, v in vars(args).items()}}
    if device.type == "cuda":
        print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    rows, points = [], []
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a time limit's SIGTERM still prints what was measured
    try:
        if "e2e" in args.stages:
            end_to_end(args, device, dtype, points)
        if "kernel" in args.stages:
            kernels_alone(args, device, dtype, rows)
    except KeyboardInterrupt:
        results["interrupted"] = True
        print("interrupted: the tables hold the points measured so far", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    sections = []
    if "kernel" in args.stages:
        results["kernel"] = rows
        sections.append("## Decoding attention alone (one layer, random inputs)\n\n" + kernel_table(rows))
        if args.kernel_split:
            sections.append("## Each launch of our decoding kernels (device µs per call, profiled)\n\n"
                            + launch_table(rows))
        if args.sweep:
            sections.append("## Split plans of the decoding kernels (µs; page: keys per page, stages: pages in "
                            "flight per program, n/split: pages per program)\n\n" + sweep_table(rows))
    if "e2e" in args.stages:
        results["e2e"] = [vars(p) for p in points]
        mode = "CUDA graphs" if device.type == "cuda" and not args.no_graphs else "eager"
        sections.append(f"## Decoding end to end ({mode}, {args.dtype})\n\n" + e2e_table(points))
    text = "\n\n".join(sections)
    print("\n" + text, flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return results


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
