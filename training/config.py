"""Checks of a training config and of its run directory.

Every check runs before the run directory is written, so a failed command leaves nothing behind that
the corrected command would trip on. Each error names the setting (``optim.lr``, ``attention.beta``, ...)
and is a ``ConfigError``, which train.py prints as one line ``error: ...`` with exit code 2.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from model.checkpoint import CONFIG, build_model, load_config
from model.gpt import GPT

# Sections of the config that define the run: a resumed run must keep them.
RUN_DEFINING = ("model", "attention", "data", "optim", "seed")
# Set by the trainer from the data (a resumed run's data settings are compared instead).
DERIVED = ("model.vocab_size",)
SCHEDULES = ("cosine", "wsd", "constant")
COMPILE_MODES = ("blocks", "model")


class ConfigError(Exception):
    """A problem with the command line or the run directory, reported in one line."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _require(key: str, value: Any, ok: bool, wanted: str) -> None:
    if not ok:
        shown = list(value) if isinstance(value, ListConfig) else value
        raise ConfigError(f"{key} must be {wanted}, got {shown!r}")


def check_settings(cfg: DictConfig) -> None:
    """The optimiser's, schedule's, trainer's and logger's numbers (torch's own messages name no setting)."""
    o, t = cfg.optim, cfg.trainer
    for key in ("lr", "min_lr", "weight_decay", "eps"):
        _require(f"optim.{key}", o[key], _is_number(o[key]) and o[key] >= 0, "a number >= 0")
    _require("optim.grad_clip", o.grad_clip, _is_number(o.grad_clip) and o.grad_clip > 0, "a number > 0")
    betas_ok = isinstance(o.betas, Sequence) and not isinstance(o.betas, str) and len(o.betas) == 2 and \
        all(_is_number(b) and 0 <= b < 1 for b in o.betas)
    _require("optim.betas", o.betas, betas_ok, "two numbers in [0, 1), e.g. [0.9,0.95]")
    _require("optim.warmup_steps", o.warmup_steps, _is_int(o.warmup_steps, 0), "an int >= 0")
    _require("optim.schedule", o.schedule, o.schedule in SCHEDULES, " or ".join(SCHEDULES))
    _require("optim.decay_fraction", o.decay_fraction,
             _is_number(o.decay_fraction) and 0 <= o.decay_fraction <= 1, "a number in [0, 1]")
    _require("seed", cfg.seed, _is_int(cfg.seed, 0), "an int >= 0")
    _require("trainer.max_steps", t.max_steps, _is_int(t.max_steps, 0), "an int >= 0")
    for key in ("batch_size", "eval_every", "eval_batches", "checkpoint_every"):
        _require(f"trainer.{key}", t[key], _is_int(t[key], 1), "an int >= 1")
    for key, low in (("threads", 1), ("keep_last", 0), ("stop_after_step", 0)):
        _require(f"trainer.{key}", t[key], t[key] is None or _is_int(t[key], low), f"null or an int >= {low}")
    _require("trainer.compile", t.compile, t.compile is None or isinstance(t.compile, bool) or t.compile in COMPILE_MODES,
             "false, blocks or model (true = blocks)")
    if compile_mode(cfg) == "model" and t.strategy == "fsdp2":
        raise ConfigError("trainer.compile=model takes strategy single or ddp; with fsdp2 use trainer.compile=blocks "
                          "(each block compiled inside its FSDP2 unit, so that its gathers stay overlapped)")
    _require("trainer.context_parallel", t.context_parallel, _is_int(t.context_parallel, 1), "an int >= 1")
    _require("trainer.cuda_graphs", t.cuda_graphs, isinstance(t.cuda_graphs, bool), "true or false")
    if t.cuda_graphs:
        needs = [f"{k} (given {v})" for k, v, bad in (
            ("trainer.compile=blocks or model", t.compile, compile_mode(cfg) is None),
            ("trainer.strategy=single or ddp", t.strategy, t.strategy == "fsdp2"),
            ("trainer.context_parallel=1", t.context_parallel, t.context_parallel != 1),
            ("trainer.device=auto or cuda on a machine with CUDA", t.device,
             t.device == "cpu" or not torch.cuda.is_available())) if bad]
        if needs:
            raise ConfigError("trainer.cuda_graphs=true needs " + "; ".join(needs))
    _require("trainer.autotune", t.autotune, isinstance(t.autotune, bool), "true or false")
    if t.autotune and compile_mode(cfg) is None:
        raise ConfigError(f"trainer.autotune=true needs trainer.compile=blocks or model (given {t.compile})")
    _require("trainer.loss_chunk", t.loss_chunk, t.loss_chunk is None or _is_int(t.loss_chunk, 1),
             "null or an int >= 1 (tokens)")
    for key in ("profile_steps", "profile_skip"):
        _require(f"trainer.{key}", t[key], _is_int(t[key], 0), "an int >= 0")
    peak = t.get("peak_tflops")
    _require("trainer.peak_tflops", peak, peak is None or (_is_number(peak) and peak > 0), "null or a number > 0")
    _require("logger.log_every", cfg.logger.log_every, _is_int(cfg.logger.log_every, 1), "an int >= 1")
    every = cfg.logger.get("diagnostics_every", 0)
    _require("logger.diagnostics_every", every, _is_int(every, 0), "an int >= 0 (0 = off)")
    seq_len, longest = cfg.model.seq_len, cfg.model.max_seq_len
    _require("model.seq_len", seq_len, _is_int(seq_len, 1), "an int >= 1")
    _require("model.max_seq_len", longest, _is_int(longest, 1), "an int >= 1")
    if seq_len > longest:
        raise ConfigError(f"model.seq_len ({seq_len}) exceeds model.max_seq_len ({longest})")
    if t.context_parallel > 1 and seq_len % (2 * t.context_parallel):
        raise ConfigError(f"model.seq_len ({seq_len}) must be divisible by 2 x trainer.context_parallel = "
                          f"{2 * t.context_parallel}: each of the {t.context_parallel} processes of a context group "
                          f"holds two equal chunks of every sequence")


def compile_mode(cfg: DictConfig) -> str | None:
    """What trainer.compile compiles: None, "blocks" (each block; true means this) or "model" (the whole model)."""
    mode = cfg.trainer.compile
    return "blocks" if mode is True else (mode or None)


def compile_options(cfg: DictConfig) -> dict:
    """torch.compile's keyword arguments for trainer.cuda_graphs and trainer.autotune: its mode reduce-overhead (CUDA
    graphs), max-autotune-no-cudagraphs (matrix products and fused kernels chosen by timing candidates when first
    compiled), max-autotune (both), or the default mode."""
    t = cfg.trainer
    if t.autotune:
        return {"mode": "max-autotune" if t.cuda_graphs else "max-autotune-no-cudagraphs"}
    return {"mode": "reduce-overhead"} if t.cuda_graphs else {}


@dataclass(frozen=True)
class Batching:
    """The global batch of trainer.batch_size sequences split over the data-parallel ranks, then into
    micro-batches (the processes of a context group read the same rows and keep their chunks of them)."""

    per_rank: int  # sequences each process reads per optimiser step
    micro: int  # sequences per forward/backward

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimiser step."""
        return self.per_rank // self.micro


def batching(cfg: DictConfig, world: int, context: int = 1) -> Batching:
    """How ``world`` processes, in context groups of ``context`` (which divides it), share the global batch."""
    t = cfg.trainer
    readers = world // context
    who = "processes" if context == 1 else "data-parallel groups (processes / trainer.context_parallel)"
    if t.batch_size % readers:
        raise ConfigError(f"trainer.batch_size ({t.batch_size}) must be divisible by the number of {who} ({readers})")
    per_rank = t.batch_size // readers
    micro = t.micro_batch_size or per_rank
    _require("trainer.micro_batch_size", micro, _is_int(micro, 1), "null or an int >= 1")
    if per_rank % micro:
        raise ConfigError(f"each of {readers} {who.split(' (')[0]} reads {per_rank} sequences per step, which "
                          f"trainer.micro_batch_size ({micro}) must divide")
    return Batching(per_rank, micro)


def resolve_precision(cfg: DictConfig, device: torch.device) -> str:
    """trainer.precision with auto resolved: bf16 (autocast) on CUDA, fp32 elsewhere."""
    precision = cfg.trainer.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("bf16", "fp32"):
        raise ConfigError(f"trainer.precision must be auto, bf16 or fp32, got '{precision}'")
    return precision


# (attention, why): settings measured to train differently compiled on a GPU than eager
COMPILE_CAVEATS = {
    "differential": "a compiled differential model trained differently from the eager one on an H200 (its lambda "
                    "ran away: 5.18 against <= 0.73 eager after 400 paper_small steps, RESULTS.md); until the cause is "
                    "found, train it with trainer.compile=false",
}


def compile_caveat(cfg: DictConfig, device: torch.device) -> str | None:
    """A warning for a setting that trains differently compiled on a GPU than eager (``COMPILE_CAVEATS``), else None.
    A warning, not an error: the compiled run still computes a model of the named kind, and a user reproducing the
    divergence needs to be able to run it."""
    why = COMPILE_CAVEATS.get(cfg.attention.name)
    if why is None or compile_mode(cfg) is None or device.type != "cuda":
        return None
    return f"trainer.compile={cfg.trainer.compile} with attention={cfg.attention.name}: {why}"


def check_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse to overwrite a run, and to resume one that does not exist."""
    if cfg.resume and not (run_dir / CONFIG).is_file():
        raise ConfigError(f"resume=true but {run_dir} is not a run directory (no {CONFIG})")
    if not cfg.resume and run_dir.exists():
        raise ConfigError(f"run directory {run_dir} already exists: pass resume=true to continue it, or "
                          f"choose another name=")


# Sections a resumed run may change on its command line; what the command line leaves unset keeps the run's value.
ADOPTED = ("trainer", "logger")
NOT_ADOPTED = ("trainer.stop_after_step", "trainer.profile_steps")  # they belong to the attempt that asked for them


def adopt_saved_settings(cfg: DictConfig, run_dir: Path, given: Sequence[str]) -> None:
    """On resume, every trainer.* and logger.* value the command line (``given``: Hydra's override strings) does
    not set is taken from the run's config.yaml, so `python train.py name=<run> resume=true` continues the run
    as it was started (its max_steps, batch, intervals) rather than with the defaults; a value given now wins.
    A group choice (trainer=<file>) counts as setting the whole section."""
    if not (run_dir / CONFIG).is_file():
        return
    keys = [o.lstrip("+~").split("=", 1)[0] for o in given]
    saved = OmegaConf.to_container(load_config(run_dir), resolve=True)
    for section in ADOPTED:
        if section in keys or section not in saved:
            continue
        for key, value in _leaves(saved[section], section).items():
            if key in NOT_ADOPTED or any(key == k or key.startswith(k + ".") for k in keys):
                continue
            if OmegaConf.select(cfg, key, default=object()) != value:
                OmegaConf.update(cfg, key, value, force_add=True)


def _leaves(value: Any, key: str) -> dict[str, Any]:
    """{dotted key: value} of every leaf of a resolved config section (lists are leaves)."""
    if not isinstance(value, dict):
        return {key: value}
    return {k: v for name, child in value.items() for k, v in _leaves(child, f"{key}.{name}").items()}


def check_resumed_config(cfg: DictConfig, run_dir: Path) -> None:
    """A resumed run keeps the settings that define it (model, attention, data, optimiser, seed).

    Both configs are compared as they resolve: the saved config.yaml holds resolved values, the fresh one
    may hold interpolations (data.dir is built from data.name and data.tokenizer), so only a real change
    is refused, and the message names each changed key with both values. model.vocab_size is left out:
    it is read from the data's shards, whose settings are compared, so the check runs before the data
    is prepared (a refused resume tokenises nothing)."""
    if not cfg.resume:
        return
    saved_all = OmegaConf.to_container(load_config(run_dir), resolve=True)
    given_all = OmegaConf.to_container(cfg, resolve=True)
    absent = object()
    changes = []
    for section in RUN_DEFINING:
        saved = _leaves(saved_all.get(section, absent), section)
        given = _leaves(given_all.get(section, absent), section)
        for key in [*given, *(k for k in saved if k not in given)]:
            if key in DERIVED:
                continue
            old, new = saved.get(key, absent), given.get(key, absent)
            if old != new:
                changes.append(f"{key} (saved {'nothing' if old is absent else repr(old)}, "
                               f"given {'nothing' if new is absent else repr(new)})")
    if changes:
        first, *rest = changes
        key, values = first.split(" ", 1)
        also = f"; also {', '.join(rest)}" if rest else ""
        raise ConfigError(f"resume=true: {key} differs from {run_dir / CONFIG} {values}{also}; resume with the "
                          f"run's own settings (only trainer.* and logger.* may change)")


class _Reads:
    """A config node that records every value read from it, as (dotted key, value)."""

    def __init__(self, node: DictConfig, path: str, log: list):
        self._node, self._path, self._log = node, path, log

    def __getattr__(self, key: str) -> Any:
        return self._read(key, getattr(self._node, key))

    def get(self, key: str, default: Any = None) -> Any:
        return self._read(key, self._node.get(key, default))

    def _read(self, key: str, value: Any) -> Any:
        path = f"{self._path}.{key}"
        if isinstance(value, DictConfig):
            return _Reads(value, path, self._log)
        self._log.append((path, value))
        return value


def build_checked_model(cfg: DictConfig) -> GPT:
    """The run's GPT; a setting the model cannot take is a ConfigError that names it.

    The model's own errors name their setting; a failed conversion (``attention.beta=abc``: "could not
    convert string to float: 'abc'") does not. Then the model is built again reading the config through
    ``_Reads``, and the error names the setting whose value the message quotes, else the last one read
    before the failure (``model.n_layer=2.5``: "'float' object cannot be interpreted as an integer")."""
    try:
        return build_model(cfg)
    except (ValueError, TypeError) as exc:
        reads: list[tuple[str, Any]] = []
        try:
            GPT(_Reads(cfg.model, "model", reads), _Reads(cfg.attention, "attention", reads),
                int(cfg.model.vocab_size))
        except (ValueError, TypeError):
            pass
        if any(key in str(exc) for key, _ in reads):
            raise ConfigError(str(exc)) from exc
        quoted = [(key, value) for key, value in reads if isinstance(value, str) and repr(value) in str(exc)]
        if not reads:
            raise
        key, value = (quoted or reads)[-1]
        raise ConfigError(f"{key}: {value!r} is not a value it can take ({exc})") from exc
