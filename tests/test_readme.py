"""The README followed as written.

Every command in the README's code blocks either runs here, on the CPU, shrunk the way the rest of the suite
shrinks runs (a smaller model, a few steps, run directories in a temporary folder), or is listed in SKIPPED with
the reason it cannot run here; a command the README gains without either fails ``test_every_command_is_run_or_
skipped_with_a_reason``. The recipe "add an attention variant" is followed literally: its class and its config
file, as printed, give a variant that trains, decodes like recomputation and agrees with its own maps.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# Commands that cannot run on a CPU in seconds, each with its reason (matched by prefix).
SKIPPED = {
    "pip install": "installs the requirements (CI does, before the tests)",
    "python -m pytest": "the test suite itself",
    "python train.py model=gpt2_162m data=fineweb_edu": "the paper's model on FineWeb-Edu: needs the Hugging Face hub "
                                                       "and a GPU",
    "python -m data.prepare english_corpus": "needs the English corpus's .txt files under data/corpus/",
    "python scripts/run_study.py": "a study of six runs on GPUs over the English corpus (tests/test_run_study.py runs "
                                   "the same script on a tiny corpus)",
}

# What shrinks a command to seconds: overrides replaced or added (key -> value).
TRAIN = {"model.n_layer": "2", "model.n_embd": "32", "model.n_head": "4", "model.seq_len": "64",
         "model.max_seq_len": "512", "trainer.max_steps": "3", "trainer.batch_size": "4", "trainer.eval_every": "3",
         "trainer.eval_batches": "1", "trainer.checkpoint_every": "3", "trainer.threads": "1",
         "logger.progress": "false"}
LONGER = {"model.seq_len": "128"}  # a command that sets the training length keeps a longer one than the default
RESUMED = {"trainer.max_steps": "5"}  # a resumed run trains on past its checkpoint
EVAL = {"max_batches": "1", "length.tokens": "1024", "passkey.trials": "1", "passkey.depths": "[0.5]",
        "zero_shot.limit": "2", "sample.max_new_tokens": "8", "device": "cpu"}
ANALYSIS = {"lengths": "[64,128]", "sequences": "1", "sink_sequences": "2", "device": "cpu"}


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, and ("", body) of every block indented by four spaces."""
    fenced = [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", text, re.S)]
    rest = re.sub(r"```.*?```", "", text, flags=re.S)
    indented = [("", textwrap.dedent(m.group(0))) for m in re.finditer(r"(?m)(?:^    \S.*\n?)+", rest)]
    return fenced + indented


def commands(text: str = README) -> list[str]:
    """The shell commands of the README's blocks, in order: continuation lines joined, comments dropped, a line
    of ``a && b`` split into its commands."""
    found = []
    for lang, body in code_blocks(text):
        if lang not in ("", "bash", "sh"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            for part in line.split("&&"):
                part = " ".join(part.split())
                if re.match(r"(\w+=\S+ )*(python|torchrun|pip)\b", part):
                    found.append(part)
    return found


def skip_reason(command: str) -> str | None:
    return next((why for prefix, why in SKIPPED.items() if command.startswith(prefix)), None)


def test_every_command_is_run_or_skipped_with_a_reason():
    listed = commands()
    assert len(listed) >= 12, listed  # the blocks were found
    for command in listed:
        if skip_reason(command) is None:
            assert shrunk(command, Path("/x")) is not None, f"the README command {command!r} is neither run nor skipped"
    for prefix in SKIPPED:
        assert any(c.startswith(prefix) for c in listed), f"SKIPPED names {prefix!r}, which the README no longer has"


def with_overrides(args: list[str], values: dict[str, str]) -> list[str]:
    """``args`` with each key=value of ``values`` replacing the same key's override, or added after them."""
    out, seen = [], set()
    for arg in args:
        key = arg.split("=", 1)[0]
        if key in values:
            arg, _ = f"{key}={values[key]}", seen.add(key)
        out.append(arg)
    return out + [f"{k}={v}" for k, v in values.items() if k not in seen]


def shrunk(command: str, tmp: Path) -> list[str] | None:
    """The argv that runs ``command`` here: its run directories under ``tmp``, the model, steps and evaluation
    shrunk; None for a command this test does not know how to run."""
    runs = f"{tmp}/runs/"
    args = [a.replace("runs/<name>", runs + "my-run").replace("results/", f"{tmp}/results/")
            for a in shlex.split(command)]
    args = [re.sub(r"(?<![\w/])runs/", runs, a) for a in args]
    if args[:2] == ["python", "train.py"] or args[0] == "torchrun":
        if args[0] == "torchrun":
            args = [sys.executable, "-m", "torch.distributed.run",
                    *[("--nproc_per_node=2" if a.startswith("--nproc_per_node") else a) for a in args[1:]]]
        else:
            args = [sys.executable, *args[1:]]
        values = dict(TRAIN, runs_root=f"{tmp}/runs")
        if any(a.startswith("model.seq_len=") for a in args):
            values.update(LONGER)
        if "resume=true" in args:
            values.update(RESUMED)
        return with_overrides(args, values)
    if args[:2] == ["python", "eval.py"]:
        return with_overrides([sys.executable, *args[1:]], EVAL)
    if args[:3] == ["python", "-m", "analysis.attention"]:
        return with_overrides([sys.executable, *args[1:]], ANALYSIS)
    if args[:3] in (["python", "-m", "analysis.figures"], ["python", "-m", "analysis.report"]):
        return [sys.executable, *args[1:]]
    return None


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    argv = [str(ROOT / a) if a in ("train.py", "eval.py") else a for a in argv]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_readme_commands_run_as_written(tmp_path):
    """Each command of the README that runs on a CPU, in the README's order (later ones use the runs of earlier
    ones), shrunk to a tiny model; the placeholders runs/a, runs/b, runs/c are runs of the README's sweep, each
    analysed first as the analysis block's first command says."""
    ran = 0
    for command in commands():
        if skip_reason(command) is not None:
            continue
        if "runs/a" in command:  # the sweep's runs stand for a, b, c
            sweep = sorted(p.name for p in (tmp_path / "runs").iterdir() if "-j" in p.name)[:3]
            for letter, name in zip("abc", sweep):
                command = re.sub(rf"runs/{letter}\b", f"runs/{name}", command)
            for name in sweep:
                analysed = run(with_overrides([sys.executable, "-m", "analysis.attention",
                                               f"run_dir={tmp_path}/runs/{name}"], ANALYSIS), tmp_path)
                assert analysed.returncode == 0, analysed.stderr[-2000:]
        done = run(shrunk(command, tmp_path), tmp_path)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        ran += 1
    assert ran >= 10
    assert (tmp_path / "runs" / "my-run" / "eval" / "results.md").is_file()
    assert (tmp_path / "results" / "claims.md").is_file()
    resumed = [json.loads(line)["step"] for line in (tmp_path / "runs" / "my-run" / "metrics.jsonl").open()]
    assert resumed == sorted(set(resumed)) and resumed[-1] == 5


def recipe_blocks() -> tuple[str, str, str]:
    """The recipe's Python block, its YAML block, and the config path the YAML's first line names."""
    section = README.split("## Recipe: add an attention variant", 1)[1].split("\n## ", 1)[0]
    blocks = dict((lang, body) for lang, body in code_blocks(section) if lang)
    yaml = blocks["yaml"]
    return blocks["python"], yaml, re.match(r"# (\S+)", yaml).group(1)


RECIPE_CHECK = """
import json, sys, torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
import recipe_variant
from model.attention import ATTENTIONS
from model.gpt import GPT
from training.loop import train

conf, overrides = sys.argv[1], sys.argv[2:]
with initialize_config_dir(config_dir=conf, version_base="1.3"):
    cfg = compose(config_name="train", overrides=overrides)
run_dir = train(cfg)
val = [json.loads(l)["val_loss"] for l in open(run_dir / "metrics.jsonl") if "val_loss" in l]

torch.manual_seed(0)
name = cfg.attention.name
model = GPT(cfg.model, cfg.attention, 50).double()
softmax = GPT(cfg.model, OmegaConf.create({"name": "softmax"}), 50)
with torch.no_grad():
    for block in model.blocks:
        block.attn.temperature.uniform_(0.5, 2.0)
idx = torch.randint(50, (2, 17))
attn, x = model.blocks[0].attn, torch.randn(2, 17, cfg.model.n_embd, dtype=torch.float64)
proj = attn.project(x, torch.arange(17))
mixed, maps = attn.mix(proj), attn.maps(proj)["combined"]
later = idx.clone(); later[:, 9:] = torch.randint(50, (2, 8))
logits, _ = model(idx)
greedy, full = model.generate(idx[:, :5], 8), idx[:, :5]
for _ in range(8):
    full = torch.cat([full, model(full)[0][:, -1:].argmax(-1)], dim=1)
print(json.dumps(dict(
    registered=name in ATTENTIONS, val_losses=val,
    extra_parameters=model.num_parameters() - softmax.num_parameters(),
    per_head=cfg.model.n_layer * cfg.model.n_head,
    maps_error=float((maps @ proj.v - mixed).abs().max()),
    causal_error=float((model(later)[0][:, :9] - logits[:, :9]).abs().max()),
    decodes_as_recomputed=bool(torch.equal(greedy, full)))))
"""


def test_the_recipe_adds_a_variant_that_trains_decodes_and_agrees_with_its_maps(tmp_path, tiny_corpus):
    code, yaml, config_path = recipe_blocks()
    (tmp_path / "recipe_variant.py").write_text(code)
    (tmp_path / "check.py").write_text(RECIPE_CHECK)
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    (tmp_path / config_path).write_text(yaml)
    name = Path(config_path).stem
    overrides = [f"attention={name}", *tiny_corpus, *TINY_MODEL, f"runs_root={tmp_path / 'runs'}",
                 "logger.progress=false", "trainer.batch_size=4", "trainer.max_steps=4", "trainer.eval_every=4",
                 "trainer.eval_batches=1", "trainer.threads=1"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]), WANDB_MODE="disabled")
    done = subprocess.run([sys.executable, str(tmp_path / "check.py"), str(tmp_path / "conf"), *overrides],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["registered"] and len(got["val_losses"]) == 1 and got["val_losses"][0] > 0
    assert got["extra_parameters"] == got["per_head"]  # one temperature per head and layer
    assert got["maps_error"] < 1e-12 and got["causal_error"] < 1e-12
    assert got["decodes_as_recomputed"]
