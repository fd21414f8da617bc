"""train.py end to end on CPU: loss goes down, exact resume (also of the shipped data config), every variant
runs, bad input is one line naming the setting and writes nothing, wandb offline keeps the run."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from conftest import compose_train

from model.attention import ATTENTIONS
from model.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, load_run
from training.config import RUN_DEFINING, ConfigError, build_checked_model
from training.distributed import Distributed, wrap_model
from training.loop import train

ROOT = Path(__file__).resolve().parents[1]


def losses(run_dir):
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r}


def test_short_run_lowers_the_loss_and_writes_the_run_directory(train_run):
    run = train_run("name=learns", "trainer.max_steps=40", "trainer.eval_every=20", "trainer.checkpoint_every=20",
                    "logger.log_every=5", "optim.warmup_steps=5")
    loss = losses(run)
    assert loss[40] < loss[5] - 0.5
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [20, 40]
    assert "lambda/0" in records[-1] and 0 <= records[-1]["lambda/0"] <= 1
    assert (run / "config.yaml").is_file()
    assert [p.name for p in list_checkpoints(run)] == ["step_0000020", "step_0000040"]
    model, cfg, step = load_run(run)
    assert step == 40 and cfg.model.vocab_size == 257 and cfg.attention.name == "tda"


def test_resume_continues_with_exactly_the_losses_of_an_uninterrupted_run(train_run):
    common = ["trainer.max_steps=12", "trainer.checkpoint_every=4", "trainer.eval_every=6", "logger.log_every=1",
              "optim.warmup_steps=3", "trainer.micro_batch_size=4"]
    full = losses(train_run("name=full", *common))
    broken = train_run("name=broken", *common, "trainer.stop_after_step=10")  # dies after step 10
    assert latest_checkpoint(broken).name == "step_0000008"
    resumed_dir = train_run("name=broken", *common, "resume=true")
    resumed = losses(resumed_dir)
    assert sorted(resumed) == list(range(1, 13))  # steps 9 and 10 logged once, not twice
    assert resumed == full  # bit-identical losses: data order, RNG and optimiser state restored


@pytest.mark.parametrize("attention", sorted(ATTENTIONS))
def test_every_variant_trains(train_run, attention):
    run = train_run(f"attention={attention}", f"name=variant-{attention}", "trainer.max_steps=6",
                    "trainer.eval_every=3")
    assert all(v == v for v in losses(run).values())


def test_init_from_starts_from_another_runs_weights(train_run):
    source = train_run("name=source", "trainer.max_steps=4")
    child = train_run("name=child", f"init_from={source}", "trainer.max_steps=1", "optim.lr=0")
    a, _, _ = load_run(source)
    b, _, _ = load_run(child)
    assert all((pa == pb).all() for pa, pb in zip(a.parameters(), b.parameters()))


def test_a_non_finite_loss_stops_the_run_naming_its_step_and_no_checkpoint_holds_its_weights(train_run, train_base,
                                                                                                 monkeypatch):
    """Losses stay on the device between logged steps; the first non-finite one is still named, and no checkpoint
    is saved after it (step 6 is poisoned: the checkpoint due at step 10 finds it, before any log reads a loss)."""
    import training.loop as loop

    real = loop.train_step

    def poisoned(run):
        loss, grad_norm, lr = real(run)
        return (loss * float("nan") if run.step == 6 else loss), grad_norm, lr

    monkeypatch.setattr(loop, "train_step", poisoned)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 6; stopping, the last good checkpoint is kept"):
        train_run("name=poisoned", "trainer.max_steps=20", "trainer.checkpoint_every=5", "logger.log_every=20",
                  "trainer.eval_every=100")
    runs_root = next(o.split("=", 1)[1] for o in train_base if o.startswith("runs_root="))
    assert [p.name for p in list_checkpoints(Path(runs_root) / "poisoned")] == ["step_0000005"]
    assert losses(Path(runs_root) / "poisoned") == {}


@pytest.mark.parametrize("settings,message", [
    (["trainer.cuda_graphs=yes"], r"trainer.cuda_graphs must be true or false, got 'yes'"),
    (["trainer.cuda_graphs=true"], r"trainer.cuda_graphs=true needs trainer.compile=blocks or model \(given False\)"),
    (["trainer.cuda_graphs=true", "trainer.compile=model", "trainer.device=cpu"],
     r"needs trainer.device=auto or cuda on a machine with CUDA \(given cpu\)$"),
], ids=["not-bool", "eager", "cpu"])
def test_cuda_graphs_are_refused_where_they_cannot_run(train_run, settings, message):
    """trainer.cuda_graphs needs a compiled model on a CUDA device (tests/test_train_gpu.py trains with them)."""
    with pytest.raises(ConfigError, match=message):
        train_run("name=graphs-refused", *settings)


@pytest.mark.parametrize("settings,message", [
    (["trainer.autotune=fast"], r"trainer.autotune must be true or false, got 'fast'"),
    (["trainer.autotune=true"], r"trainer.autotune=true needs trainer.compile=blocks or model \(given False\)$"),
], ids=["not-bool", "eager"])
def test_autotune_is_refused_without_compilation(train_run, settings, message):
    with pytest.raises(ConfigError, match=message):
        train_run("name=autotune-refused", *settings)


@pytest.mark.parametrize("scope", ["model", "blocks"])
@pytest.mark.parametrize("graphs,autotune,options", [
    (False, False, {}), (True, False, {"mode": "reduce-overhead"}),
    (False, True, {"mode": "max-autotune-no-cudagraphs"}), (True, True, {"mode": "max-autotune"}),
])
def test_the_model_is_compiled_in_the_mode_of_cuda_graphs_and_autotune(scope, graphs, autotune, options):
    """wrap_model compiles the whole model, or each block, with torch.compile's mode for each pair of
    trainer.cuda_graphs and trainer.autotune: autotuning never drops the CUDA graphs asked for, nor adds ones not
    asked for."""
    compiled = []

    class Part(torch.nn.Module):
        def compile(self, **options):
            compiled.append((self, options))

    model = Part()
    model.blocks = torch.nn.ModuleList([Part(), Part()])
    cfg = OmegaConf.create({"trainer": {"compile": scope, "cuda_graphs": graphs, "autotune": autotune}})
    wrap_model(model, cfg, Distributed(0, 1, 0, "single", torch.device("cpu")), "fp32")
    assert compiled == ([(model, options)] if scope == "model" else [(b, options) for b in model.blocks])


def test_existing_run_directory_is_refused_without_resume(train_run):
    train_run("name=taken", "trainer.max_steps=1")
    with pytest.raises(ConfigError, match="already exists: pass resume=true"):
        train_run("name=taken", "trainer.max_steps=1")


def test_resume_of_a_missing_run_is_refused(train_run):
    with pytest.raises(ConfigError, match="not a run directory"):
        train_run("name=never-ran", "resume=true")


def test_resume_with_changed_model_is_refused(train_run):
    train_run("name=fixed", "trainer.max_steps=2")
    with pytest.raises(ConfigError, match=r"optim.lr differs from .*config.yaml \(saved 0.003, given 1\)"):
        train_run("name=fixed", "resume=true", "optim.lr=1")


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args,message", [
    (["attention=nope"], "attention"),
    (["model.n_head=3", "model.n_embd=48"], "error: attention 'tda' with the paired head layout needs an even"),
    (["model.seq_len=8192"], "error: model.seq_len (8192) exceeds model.max_seq_len"),
    (["name=nothing-here", "resume=true"], "error: resume=true but"),
    (["optim.lr=-1e-3"], "error: optim.lr must be a number >= 0, got -0.001"),
    (["attention.beta=abc"], "error: attention.beta: 'abc' is not a value it can take"),
])
def test_bad_command_lines_give_one_line_errors(tmp_path, tiny_corpus, args, message):
    result = run_cli(*tiny_corpus, "model=tiny", f"runs_root={tmp_path}", *args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    if message.startswith("error: "):  # train.py's own checks (the others are Hydra's): exit 2, one line
        assert result.returncode == 2 and result.stderr.strip().startswith(message)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not list(tmp_path.glob("*/config.yaml"))  # nothing written that a corrected rerun would trip on


def test_resuming_a_run_stopped_before_its_first_checkpoint_says_how_to_start_again(tmp_path, tiny_corpus):
    """The README's kill-then-resume, killed before the first checkpoint: the run directory exists (a fresh start
    is refused) but holds nothing to continue from, so the error names the way out instead of going in a circle."""
    common = [*tiny_corpus, "model=tiny", f"runs_root={tmp_path}", "name=early", "trainer.max_steps=4",
              "trainer.checkpoint_every=4", "trainer.threads=1", "trainer.batch_size=2", "logger.progress=false"]
    run_cli(*common, "trainer.stop_after_step=1", cwd=tmp_path)  # stops after step 1 without saving
    run_dir = tmp_path / "early"
    assert (run_dir / "config.yaml").is_file() and not list(run_dir.glob("checkpoints/*"))
    again = run_cli(*common, cwd=tmp_path)
    assert "already exists: pass resume=true" in again.stderr
    result = run_cli(*common, "resume=true", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"error: resume=true but {run_dir} has no complete checkpoint: the run stopped before its first (every "
        f"trainer.checkpoint_every=4 steps), so there is nothing to continue; remove {run_dir} to start it again, "
        "or choose another name=")


def test_a_plain_resume_continues_with_the_runs_own_schedule(tmp_path, tiny_corpus):
    """`train.py name=<run> resume=true` keeps the trainer.* and logger.* values the run was started with (here
    max_steps=4, not the default 900) unless the command line sets them; the fault injection and the profiling of
    the first attempt (stop_after_step, profile_steps) are not carried over."""
    common = [*tiny_corpus, "model=tiny", f"runs_root={tmp_path}", "name=plain", "trainer.threads=1",
              "logger.progress=false"]
    first = run_cli(*common, "trainer.max_steps=4", "trainer.checkpoint_every=2", "trainer.batch_size=2",
                    "logger.log_every=1", "trainer.stop_after_step=3", "trainer.profile_steps=1",
                    "trainer.profile_skip=0", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (tmp_path / "plain" / "profile.md").unlink()  # step 1 was profiled
    resumed = run_cli(*common, "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert not (tmp_path / "plain" / "profile.md").exists()
    steps = [json.loads(line)["step"] for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 4 and 3 in steps
    saved = OmegaConf.load(tmp_path / "plain" / "config.yaml")
    assert saved.trainer.max_steps == 4 and saved.trainer.batch_size == 2 and saved.logger.log_every == 1
    longer = run_cli(*common, "resume=true", "trainer.max_steps=5", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    last = json.loads((tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 5


def test_paper_small_preset_runs_on_cpu_with_the_tiny_model(train_run):
    # the fixture's own data overrides come first: restore the preset's BOS-aligned windows after them
    run = train_run("+experiment=paper_small", "model=tiny", "data.bos_aligned=true", "name=paper-small", "trainer.max_steps=3",
                    "trainer.eval_every=3", "trainer.batch_size=4", "trainer.micro_batch_size=2", "logger.log_every=1",
                    "model.n_layer=2",
                    "model.n_embd=32", "model.seq_len=64", "model.max_seq_len=512")
    assert sorted(losses(run)) == [1, 2, 3]
    _, cfg, _ = load_run(run)
    assert cfg.data.bos_aligned and cfg.optim.lr == 1e-3


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_ones(train_run):
    common = ["trainer.max_steps=3", "trainer.eval_every=3", "logger.log_every=1", "model.n_layer=1"]
    eager = losses(train_run("name=eager", *common))
    compiled = losses(train_run("name=compiled", "trainer.compile=true", *common))
    assert sorted(compiled) == [1, 2, 3]
    assert all(abs(compiled[s] - eager[s]) < 1e-4 for s in eager)


def test_wandb_is_imported_only_when_asked_for_and_missing_it_is_one_line(train_run, monkeypatch):
    import sys as _sys

    monkeypatch.setitem(_sys.modules, "wandb", None)  # as if not installed: `import wandb` fails
    train_run("name=no-wandb", "trainer.max_steps=1")  # disabled (the default): never imported
    with pytest.raises(ConfigError, match="needs the wandb package"):
        train_run("name=wandb-offline", "trainer.max_steps=1", "logger.wandb.mode=offline")
    with pytest.raises(ConfigError, match="already exists"):  # the failed run left nothing behind...
        train_run("name=no-wandb", "trainer.max_steps=1")
    train_run("name=wandb-offline", "trainer.max_steps=1")  # ...so its name is still free
    with pytest.raises(ConfigError, match="online, offline or disabled"):
        train_run("name=wandb-bad", "trainer.max_steps=1", "logger.wandb.mode=sometimes")


def test_wandb_gets_the_config_every_logged_record_and_keeps_its_run_id_across_resume(train_run, monkeypatch):
    import sys as _sys
    import types

    calls = {"init": [], "log": []}

    class FakeRun:
        id = "run-123"

        def log(self, record, step):
            calls["log"].append((step, record))

        def finish(self):
            calls["finish"] = True

    def init(**kwargs):
        calls["init"].append(kwargs)
        return FakeRun()

    monkeypatch.setitem(_sys.modules, "wandb", types.SimpleNamespace(init=init))
    common = ["logger.wandb.mode=offline", "logger.log_every=1", "trainer.checkpoint_every=2", "trainer.eval_every=2"]
    train_run("name=with-wandb", "trainer.max_steps=2", *common)
    train_run("name=with-wandb", "trainer.max_steps=3", "resume=true", *common)
    assert calls["init"][0]["mode"] == "offline" and calls["init"][0]["id"] is None
    assert calls["init"][0]["config"]["attention"]["name"] == "tda"
    assert calls["init"][1]["id"] == "run-123"  # the resumed run continues the same wandb run
    assert [step for step, _ in calls["log"]] == [1, 2, 3]
    assert "lambda/0" in calls["log"][0][1] and "val_loss" in calls["log"][1][1] and calls.get("finish")


# ---- the shipped configs as written, checks before anything is written, wandb offline ----

# model=tiny made smaller, on the shipped data=builtin (whose data.dir is an interpolation)
SHIPPED = ["model=tiny", "model.n_layer=1", "model.n_embd=32", "model.n_head=4", "model.seq_len=64",
           "trainer.batch_size=4", "trainer.eval_batches=1", "trainer.threads=1", "logger.progress=false",
           "logger.log_every=1", "trainer.checkpoint_every=2", "name=a"]


def test_a_run_of_the_shipped_builtin_data_resumes_and_a_changed_tokenizer_is_refused_by_name(tmp_path):
    """The issue's reproduction: train on data=builtin, then resume=true. The saved config holds data.dir
    resolved, the command line's the interpolation; only a real change (the tokenizer, which moves
    data.dir) is refused, naming the key and both values."""
    common = [*SHIPPED, f"runs_root={tmp_path}"]
    train(compose_train([*common, "trainer.max_steps=2"]))
    run = train(compose_train([*common, "trainer.max_steps=3", "resume=true"]))
    assert sorted(losses(run)) == [1, 2, 3]
    with pytest.raises(ConfigError, match=r"data.tokenizer differs from .*config.yaml \(saved 'bytes', given 'gpt2'\)"):
        train(compose_train([*common, "trainer.max_steps=4", "resume=true", "data.tokenizer=gpt2"]))


@pytest.mark.parametrize("mistake,message", [
    (["optim.lr=-1e-3"], r"optim.lr must be a number >= 0, got -0.001"),
    (["init_from=no-such-run"], r"init_from=no-such-run: no complete checkpoint"),
    (["model.seq_len=16384", "model.max_seq_len=16384"], r"validation batches .* model.seq_len=16384 .*no window of seq_len \+ 1 = 16385 tokens fits"),
    (["attention.beta=abc"], r"attention.beta: 'abc' is not a value it can take"),
], ids=["lr", "init_from", "validation", "beta"])
def test_a_failed_check_writes_nothing_so_the_corrected_command_runs(train_run, mistake, message):
    name = f"corrected-{mistake[0].split('=')[0]}"
    with pytest.raises(ConfigError, match=message):
        train_run(f"name={name}", "trainer.max_steps=1", *mistake)
    run = train_run(f"name={name}", "trainer.max_steps=1")  # the same command without the mistake
    assert sorted(losses(run)) == [1]


@pytest.mark.parametrize("override", ["attention.beta=abc", "attention.power=x", "model.n_head=abc",
                                      "model.n_layer=2.5"])
def test_a_value_the_model_cannot_take_is_named(override):
    key, value = override.split("=")
    with pytest.raises(ConfigError, match=rf"^{key}: '?{value}'? is not a value it can take \("):
        build_checked_model(compose_train(["model=tiny", "+model.vocab_size=257", override]))


def read_wandb_records(path: Path) -> list:
    """The records of a wandb run file (run-<id>.wandb): LevelDB's log format (32 KiB blocks of chunks with
    a 7-byte header: crc32, length, type; 1 = a whole record, 2/3/4 = first/middle/last piece) after
    wandb's 7-byte file header, each record a wandb_internal_pb2.Record."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, records, pieces, pos = path.read_bytes(), [], b"", 7
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (length, kind) == (0, 0):  # the rest of a block is padding
            pos += left
            continue
        if pos + 7 + length > len(data):  # still being written
            break
        pieces += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(pieces))
            pieces = b""
    return records


def finished_wandb_records(path: Path, timeout: float = 60) -> list:
    """The records of a finished wandb run file. wandb's service process writes the file and may still be
    writing it when wandb.finish() has returned: wait for the run's exit record."""
    start = time.monotonic()
    while True:
        records = read_wandb_records(path)
        if any(r.HasField("exit") for r in records):
            return records
        assert time.monotonic() - start < timeout, f"{path} has no exit record"
        time.sleep(0.2)


def test_wandb_offline_run_keeps_metrics_config_and_run_id_and_a_resume_continues_it(train_run, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # tests/conftest.py disables wandb for every other test
    common = ["name=wandb-offline-run", "logger.wandb.mode=offline", "logger.log_every=1", "trainer.checkpoint_every=2",
              "trainer.eval_every=2"]
    run = train_run(*common, "trainer.max_steps=2")
    run_id = load_checkpoint(latest_checkpoint(run))[1]["wandb_id"]
    train_run(*common, "trainer.max_steps=3", "resume=true")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    attempts = sorted((run / "wandb").glob("offline-run-*"))
    assert len(attempts) == 2 and all(p.name.endswith(f"-{run_id}") for p in attempts)  # one run, two attempts
    logged = {}
    for attempt in attempts:
        records = finished_wandb_records(attempt / f"run-{run_id}.wandb")
        assert {r.run.run_id for r in records if r.HasField("run")} == {run_id}
        config = {u.key: json.loads(u.value_json) for r in records if r.HasField("run") for u in r.run.config.update}
        assert {k: config[k] for k in RUN_DEFINING} == {k: saved[k] for k in RUN_DEFINING}
        for r in records:
            if r.HasField("history"):
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                logged[items["step"]] = items
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(logged) == [1, 2, 3]
    for record in metrics:
        assert {k: logged[record["step"]][k] for k in record} == record
