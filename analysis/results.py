"""Reading what a run directory holds for figures and reports: its config, metrics.jsonl, the output of
analysis.attention, and eval.py's eval/<task>.json (read defensively: absent or unreadable -> None).

Analysis summaries hold aggregates only, so a summary written under older metric definitions cannot be
converted: ``check_metrics_versions`` refuses summaries of another metrics version than this code's
(analysis.metrics.METRICS_VERSION; a summary without the field is version 1), and says which runs to
analyse again."""
from __future__ import annotations

import collections
import csv
import functools
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from analysis.attention import OUTPUT, ROWS, SUMMARY
from analysis.metrics import METRICS_VERSION
from model.checkpoint import METRICS, load_config


@dataclass
class RunResults:
    """A run's name, directory, config, metrics.jsonl records and analysis summary (None if not run)."""

    name: str
    path: Path
    config: DictConfig
    metrics: list[dict]
    summary: dict | None

    @property
    def attention(self) -> str:
        return str(self.config.attention.name)

    def eval_result(self, task: str) -> dict | None:
        """eval/<task>.json as written by eval.py, or None when absent or unreadable."""
        path = self.path / "eval" / f"{task}.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def row_curves(self, length: int) -> dict[str, list[list[float]]]:
        """rows.csv.gz (or an older analysis's rows.csv) at one length: {column: [per layer: values by position]}
        (NaN for empty cells). FileNotFoundError when neither was kept."""
        out: dict[str, list[list[float]]] = {}
        path = self.path / OUTPUT / ROWS
        if not path.is_file() and (self.path / OUTPUT / "rows.csv").is_file():
            path = self.path / OUTPUT / "rows.csv"
        with (gzip.open(path, "rt", newline="") if path.suffix == ".gz" else open(path, newline="")) as f:
            for row in csv.DictReader(f):
                if int(row["length"]) != length:
                    continue
                layer = int(row["layer"])
                for key, value in row.items():
                    if key in ("length", "layer", "position"):
                        continue
                    per_layer = out.setdefault(key, [])
                    while len(per_layer) <= layer:
                        per_layer.append([])
                    per_layer[layer].append(float(value) if value not in ("", "None") else float("nan"))
        return out

    def final_val_loss(self) -> float | None:
        """eval/val_loss.json's loss, else the last val_loss logged in metrics.jsonl, else None."""
        result = self.eval_result("val_loss")
        if result is not None and isinstance(result.get("loss"), (int, float)):
            return float(result["loss"])
        logged = [r["val_loss"] for r in self.metrics if isinstance(r.get("val_loss"), (int, float))]
        return float(logged[-1]) if logged else None

    def length_summary(self, length: int | None = None) -> dict | None:
        """The analysis summary at ``length`` (default: the probe length nearest the training length)."""
        if not self.summary or not self.summary.get("lengths"):
            return None
        target = int(length or self.config.model.seq_len)
        return min(self.summary["lengths"], key=lambda s: (abs(s["length"] - target), s["length"]))


# Config keys that do not make runs different variants (seeds, names, paths, logging).
IGNORED_KEYS = ("name", "seed", "runs_root", "resume", "init_from", "logger", "data.dir", "data.workers")
# trainer.* says how a run is executed (device, processes, compilation, micro-batches, intervals, profiling): only
# these of its keys change what the model learns or the validation loss it logs, and name a configuration. Every
# other trainer key, including one added after some runs were made (in the newer runs' configs only), does not.
TRAINER_SETTINGS = ("trainer.precision", "trainer.batch_size", "trainer.max_steps", "trainer.eval_batches")


@dataclass
class Group:
    """Runs that share a config up to the seed: ``settings`` their config_settings, ``parts`` the (key, value)
    settings that name the configuration (group_runs), ``label`` the name they make with the attention."""

    runs: list[RunResults]
    settings: dict[str, str]
    parts: tuple[tuple[str, str], ...] = ()

    @property
    def attention(self) -> str:
        return self.runs[0].attention

    @property
    def label(self) -> str:
        return self.label_without(())

    def label_without(self, keys: tuple[str, ...]) -> str:
        """The label with the settings of ``keys`` left out (a size trend names a configuration across sizes)."""
        return _label(self.attention, [_setting(k, v) for k, v in self.parts if k not in keys])

    def setting(self, key: str):
        return OmegaConf.select(self.runs[0].config, key)


def config_settings(cfg: DictConfig) -> dict[str, str]:
    """A run's config flattened to {"dotted.key": repr(value)} without the keys that do not make a configuration
    (IGNORED_KEYS: name, seed, paths, logging; the trainer's keys but TRAINER_SETTINGS): runs with equal settings
    differ only in their seed."""
    out = {}

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if any(name == k or name.startswith(k + ".") for k in IGNORED_KEYS):
                continue
            if name.startswith("trainer.") and not isinstance(value, dict) and name not in TRAINER_SETTINGS:
                continue
            if isinstance(value, dict):
                walk(value, name + ".")
            else:
                out[name] = repr(value)

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


ATTENTION_DEFAULTS = Path(__file__).resolve().parents[1] / "conf" / "attention"


@functools.lru_cache(maxsize=None)
def _attention_defaults(name: str) -> dict[str, str]:
    """conf/attention/<name>.yaml flattened as config_settings flattens a run's config ({} for an attention without
    one)."""
    path = ATTENTION_DEFAULTS / f"{name}.yaml"
    return config_settings(OmegaConf.create({"attention": OmegaConf.load(path)})) if path.is_file() else {}


def _setting(key: str, value: str) -> str:
    """One setting as a label shows it: key=value, an attention setting without its "attention." prefix."""
    return f"{key.removeprefix('attention.')}={value.strip(chr(39))}"


def _off_defaults(flat: dict[str, str], flats: list[dict[str, str]]) -> list[str]:
    """The keys that set a configuration apart: its attention settings that differ from the shipped defaults
    (conf/attention/<name>.yaml; a setting the run's config lacks counts as the default), then any other setting
    that differs among the runs (``flats``, one per run) where this configuration's value is not the one most runs
    share (e.g. model.n_head=12 beside the default heads of most runs; trainer.max_steps for every run when two
    studies of equal size are compared)."""
    defaults = _attention_defaults(flat["attention.name"].strip(chr(39)))
    own = [k for k in sorted(flat)
           if k.startswith("attention.") and k != "attention.name" and defaults.get(k, flat[k]) != flat[k]]
    differing = [k for k in sorted(flat) if not k.startswith("attention.") and len({f.get(k) for f in flats}) > 1
                 and flat[k] not in _most_common([f.get(k) for f in flats])]
    return own + differing


def _most_common(values: list) -> set:
    """The value most of ``values`` hold, as a set of one; empty when two or more values tie for it (then no value
    is the usual one, and every configuration shows its own)."""
    counts = collections.Counter(values).most_common(2)
    return {counts[0][0]} if len(counts) == 1 or counts[0][1] > counts[1][1] else set()


def _label(attention: str, parts: list[str]) -> str:
    return attention + (f" ({', '.join(parts)})" if parts else "")


def group_runs(runs: list[RunResults]) -> list[Group]:
    """Runs grouped by config (seeds together), in order of first appearance, each labelled by its attention and
    its settings off the attention's defaults (``_off_defaults``): "softmax", "tda (layout=extra_proj)". Where
    labels would coincide (settings that no defaults file names), each of those configurations is labelled
    instead by the settings it has in which they differ."""
    keyed: dict[tuple, list[RunResults]] = {}
    flats = {}
    for run in runs:
        flat = config_settings(run.config)
        key = tuple(sorted(flat.items()))
        keyed.setdefault(key, []).append(run)
        flats[key] = flat
    every = [flats[key] for key, members in keyed.items() for _ in members]  # one per run
    names = {key: _off_defaults(flats[key], every) for key in keyed}
    labels = {key: _label(members[0].attention, [_setting(k, flats[key][k]) for k in names[key]])
              for key, members in keyed.items()}
    for key in keyed:
        clash = [flats[k] for k in keyed if labels[k] == labels[key]]
        if len(clash) > 1:
            names[key] = sorted(k for k in flats[key] if len({f.get(k) for f in clash}) > 1)
    return [Group(members, flats[key], tuple((k, flats[key][k]) for k in names[key]))
            for key, members in keyed.items()]


def families(groups: list[Group], varying: tuple[str, ...]) -> list[list[Group]]:
    """``groups`` gathered into families equal in every setting but those of ``varying`` (the configurations of one
    recipe across the values of a swept setting), each in the groups' order, families by first appearance."""
    out: dict[tuple, list[Group]] = {}
    for g in groups:
        key = tuple(sorted((k, v) for k, v in g.settings.items() if k not in varying))
        out.setdefault(key, []).append(g)
    return list(out.values())


def read_metrics(path: Path) -> list[dict]:
    """The JSON lines of metrics.jsonl (damaged lines skipped); [] when absent."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def load_results(run_dir: str | Path, need_analysis: bool = False) -> RunResults:
    """A run directory's results. Raises FileNotFoundError (one line) for an unknown run, or, with
    ``need_analysis``, when analysis.attention has not been run on it."""
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {path} does not exist")
    config = load_config(path)
    summary_path = path / OUTPUT / SUMMARY
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if need_analysis and summary is None:
        raise FileNotFoundError(f"{path} has no {OUTPUT}/{SUMMARY}: run python -m analysis.attention run_dir={path}")
    return RunResults(path.name, path, config, read_metrics(path / METRICS), summary)


def metrics_version(summary: dict) -> int:
    """The metrics version of an analysis summary; a summary written before versions were recorded is 1."""
    return int(summary.get("metrics_version", 1))


def check_metrics_versions(runs: list[RunResults]) -> None:
    """Raise ValueError (one line) when a run's analysis summary is of another metrics version than this
    code's, naming every summary file with its version and the command that rewrites the stale ones.
    Runs without a summary are not checked."""
    versions = [(run, metrics_version(run.summary)) for run in runs if run.summary is not None]
    stale = [run for run, version in versions if version != METRICS_VERSION]
    if stale:
        listed = ", ".join(f"{run.path / OUTPUT / SUMMARY} (version {version})" for run, version in versions)
        raise ValueError(f"analysis summaries of different metrics versions cannot be compared: {listed}; this code "
                         f"reads version {METRICS_VERSION}: re-run python -m analysis.attention run_dir=<run> for "
                         + ", ".join(str(run.path) for run in stale))


def run_list(runs) -> list[str]:
    """The ``runs`` option as a list of paths (a list, or one string); ValueError when empty."""
    if isinstance(runs, str):
        runs = [runs]
    runs = list(OmegaConf.to_object(runs) if OmegaConf.is_config(runs) else runs or [])
    if not runs:
        raise ValueError("runs must name at least one run directory, e.g. runs=[runs/a,runs/b]")
    return [str(r) for r in runs]
