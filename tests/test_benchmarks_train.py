"""benchmarks.train: its table (scaling efficiency against one GPU of the same attention, setting and strategy, the
ratio to softmax at the same point, failed points) without training, and one quick run of the command on CPU over
the grid's axes (a setting, strategies, GPU counts, context parallelism) with a tiny model."""
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.train import table
from tests.conftest import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]


def _point(attention, gpus, tokens_per_s, strategy="ddp", setting="-", context_parallel=1, **extra):
    return dict(attention=attention, setting=setting, strategy=strategy, gpus=gpus, context_parallel=context_parallel,
                global_batch=f"{16 * gpus // context_parallel} x 1024", tokens_per_s=tokens_per_s, **extra)


def test_scaling_efficiency_and_ratio_to_softmax():
    points = [_point("softmax", 1, 200_000.0, mfu=0.15, peak_memory_gb=22.5), _point("tda", 1, 170_000.0),
              _point("softmax", 2, 380_000.0), _point("tda", 2, 340_000.0),
              _point("softmax", 2, 300_000.0, context_parallel=2), _point("tda", 2, 330_000.0, context_parallel=2)]
    lines = table(points).splitlines()
    assert len(lines) == 2 + len(points)
    assert lines[2] == "| softmax | - | ddp | 1 | 1 | 16 x 1024 | 200,000 | 15.0% | 22.5 | 100.0% | 1.000 |"
    assert lines[3].endswith("| 170,000 |  |  | 100.0% | 0.850 |")
    assert lines[4].endswith("| 380,000 |  |  | 95.0% | 1.000 |")
    assert lines[5].endswith("| 340,000 |  |  | 100.0% | 0.895 |")
    assert lines[6].startswith("| softmax | - | ddp | 2 | 2 | 16 x 1024 |") and lines[6].endswith("| 75.0% | 1.000 |")
    assert lines[7].endswith("| 330,000 |  |  | 97.1% | 1.100 |")


def test_settings_and_strategies_have_their_own_references():
    points = [_point("softmax", 1, 200_000.0, strategy="single"), _point("softmax", 1, 180_000.0),
              _point("softmax", 1, 300_000.0, strategy="single", setting="trainer.compile=model"),
              _point("tda", 1, 330_000.0, strategy="single", setting="trainer.compile=model"),
              _point("softmax", 2, 360_000.0)]
    lines = table(points).splitlines()
    assert lines[3].endswith("| 180,000 |  |  | 100.0% | 1.000 |")  # ddp on one GPU is its own reference
    assert lines[5].startswith("| tda | trainer.compile=model | single |") and lines[5].endswith("| 1.100 |")
    assert lines[6].endswith("| 360,000 |  |  | 100.0% | 1.000 |")  # against ddp's one GPU, not single's


def test_a_failed_point_is_a_row_of_its_own_and_no_reference():
    points = [dict(attention="softmax", setting="-", strategy="ddp", gpus=1, context_parallel=1, error=1),
              _point("tda", 1, 170_000.0)]
    lines = table(points).splitlines()
    assert lines[2] == "| softmax | - | ddp | 1 | 1 | failed (exit 1) | | | | | |"
    assert lines[3].endswith("| 170,000 |  |  | 100.0% |  |")


def test_the_command_runs_on_cpu_over_every_axis_of_its_grid(tiny_corpus, tmp_path):
    out = tmp_path / "table.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.train", "--attentions", "softmax", "--settings", "trainer.loss_chunk=50",
           "--strategies", "single", "ddp", "--gpus", "1", "2", "--context-parallel", "1", "2", "--steps", "2",
           "--log-every", "1", "--skip", "1", "--micro-batch", "2", "--profile", "1", "--out", str(out), "--",
           *tiny_corpus, *TINY_MODEL, "trainer.device=cpu", "trainer.threads=1"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    rows = text.split("\n\n")[0].splitlines()[2:]
    # each point's last step profiled (train.py's profile.md), under the point's name
    profiles = text.split("## Where a step's time goes (the last profiled steps of each point)\n\n")[1]
    assert [line for line in profiles.splitlines() if line.startswith("### ")] == [
        f"### softmax, trainer.loss_chunk=50, {where}" for where in (
            "single, 1 GPU(s), CP 1", "ddp, 1 GPU(s), CP 1", "ddp, 2 GPU(s), CP 1", "ddp, 2 GPU(s), CP 2")]
    assert profiles.count("1 steps profiled") == 4
    # the profiled step is the one after the timed ones (--steps 2), never one of them
    assert profiles.count("from the start of step 3 to the end of step 3") == 4
    assert sum(line.startswith("| matrix products |") for line in profiles.splitlines()) == 4
    # single on one GPU; ddp on one and two; two GPUs splitting each sequence (single on 2 and CP 2 on 1 skipped)
    assert [row.split(" | ")[2:5] for row in rows] == [["single", "1", "1"], ["ddp", "1", "1"], ["ddp", "2", "1"],
                                                       ["ddp", "2", "2"]]
    assert all(row.startswith("| softmax | trainer.loss_chunk=50 |") and "failed" not in row for row in rows)
    assert [row.split(" | ")[5] for row in rows] == ["2 x 64", "2 x 64", "4 x 64", "2 x 64"]


def test_points_start_from_trained_weights(tiny_corpus, tmp_path):
    """--train-first trains each attention without --init-from once (here TDA), --init-from names a run for another
    (softmax, trained here beforehand); every point of an attention then starts from its run's weights (train.py's
    init_from, on its command line), and the table says from which."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    tiny = [*tiny_corpus, *TINY_MODEL, "trainer.device=cpu", "trainer.threads=1"]
    common = ["trainer.max_steps=2", "trainer.batch_size=2", "trainer.micro_batch_size=2", "trainer.eval_every=2",
              "trainer.eval_batches=1", "trainer.checkpoint_every=2", "logger.progress=false"]
    trained = subprocess.run([sys.executable, str(ROOT / "train.py"), *tiny, *common, "attention=softmax",
                              "name=soft", f"runs_root={tmp_path}"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    out = tmp_path / "table.md"
    cmd = [sys.executable, "-m", "benchmarks.train", "--attentions", "softmax", "tda", "--steps", "2",
           "--log-every", "1", "--skip", "1", "--micro-batch", "2", "--out", str(out),
           "--init-from", f"softmax={tmp_path / 'soft'}", "--train-first", " ".join(tiny + common), "--", *tiny,
           "model.seq_len=128"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training first:" in result.stdout and "attention=tda" in result.stdout
    assert "attention=softmax name=first-softmax" not in result.stdout      # softmax has its run already
    rows = out.read_text().splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == ["| softmax (from soft)", "| tda (from first-tda)"]
    assert all(row.split(" | ")[5] == "2 x 128" for row in rows)   # trained at 64 tokens, measured at 128


def test_initial_weights_are_checked(tmp_path):
    from benchmarks.train import Point, command

    for bad, message in ((["tda"], "ATTENTION=RUN_DIR"), (["rela=" + str(tmp_path)], "not one of --attentions"),
                         (["tda=" + str(tmp_path / "missing")], "no run directory"),
                         (["tda=" + str(tmp_path), "tda=" + str(tmp_path)], "names 'tda' twice")):
        result = subprocess.run([sys.executable, "-m", "benchmarks.train", "--init-from", *bad, "--", "x=1"],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr, (bad, result.stderr)
    args = type("Args", (), dict(micro_batch=2, accumulation=1, overrides=[], steps=3, log_every=1, profile=0))()
    cmd, _ = command(Point("tda", "", "single", 1, 1), 0, args, tmp_path, init_from=tmp_path / "run")
    assert cmd[-1] == f"init_from={tmp_path / 'run'}"


def test_profiled_points_need_a_window_that_ends_at_steps():
    """With --profile the run goes on past --steps, so the last timed window must be logged at step --steps."""
    result = subprocess.run([sys.executable, "-m", "benchmarks.train", "--steps", "15", "--log-every", "10",
                             "--profile", "2", "--", "x=1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "must be a multiple of --log-every" in result.stderr, result.stderr


def test_tokens_per_s_comes_from_the_windows_before_the_profiled_steps():
    from benchmarks.train import timed_windows

    records = [{"step": s, "tokens_per_s": 100.0 * s} for s in (10, 20, 30, 40)] + [
        {"step": 45, "tokens_per_s": 1.0, "val_loss": 3.0}]   # the profiled steps' window and the evaluation
    assert [r["step"] for r in timed_windows(records, 40, 2)] == [30, 40]
    assert [r["step"] for r in timed_windows(records, 40, 9)] == [40]   # too short to skip: the last timed window
    assert [r["step"] for r in timed_windows(records[:2] + [{"step": 25, "loss": 1.0}], 40, 1)] == [20]


def test_repeated_rounds_give_medians_and_each_rounds_own_ratio():
    """--repeats: a point's tokens/s is the median of its rounds with their range, and vs softmax the median and
    range of the ratios within each round (round 1's TDA against round 1's softmax), not a ratio of medians."""
    from benchmarks.train import combined

    rounds = [(100.0, 130.0), (90.0, 126.0), (110.0, 121.0)]   # (softmax, tda) tokens/s per round
    results = []
    for i, (soft, tda) in enumerate(rounds):
        results += [_point("softmax", 1, soft, strategy="single", round=i, mfu=0.1 * (i + 1), peak_memory_gb=2.0 + i),
                    _point("tda", 1, tda, strategy="single", round=i)]
    results.append(dict(_point("tda", 1, 0.0, strategy="single", round=3), error=1))  # a failed round: left out
    rows = combined(results)
    assert [r["attention"] for r in rows] == ["softmax", "tda"] and rows[1]["rounds"] == 3
    assert rows[0]["mfu"] == 0.2 and rows[0]["peak_memory_gb"] == 4.0 and "mfu" not in rows[1]
    assert rows[1]["ratios"] == [1.3, 1.4, 121.0 / 110.0]
    lines = table(rows).splitlines()
    assert lines[2] == "| softmax | - | single | 1 | 1 | 16 x 1024 | 100 (90–110) | 20.0% | 4.0 | 100.0% | 1.000 |"
    # the ratio of the medians would be 126 / 100 = 1.260; the rounds' own ratios are 1.300, 1.400 and 1.100
    assert lines[3] == "| tda | - | single | 1 | 1 | 16 x 1024 | 126 (121–130) |  |  | 100.0% | 1.300 (1.100–1.400) |"
    plain = [_point("softmax", 1, 100.0), _point("tda", 1, 120.0)]
    assert combined(plain) is plain   # no rounds: the results as they are


def test_every_round_of_the_grid_runs_on_cpu(tiny_corpus, tmp_path):
    out = tmp_path / "table.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.train", "--attentions", "softmax", "tda", "--repeats", "2", "--steps",
           "2", "--log-every", "1", "--skip", "1", "--micro-batch", "2", "--out", str(out), "--", *tiny_corpus,
           *TINY_MODEL, "trainer.device=cpu", "trainer.threads=1"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    points = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(p["attention"], p["round"]) for p in points] == [("softmax", 0), ("tda", 0), ("softmax", 1), ("tda", 1)]
    rows = out.read_text().splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == ["| softmax", "| tda"]
    assert rows[0].endswith("| 1.000 |")


def test_repeats_must_be_positive():
    result = subprocess.run([sys.executable, "-m", "benchmarks.train", "--repeats", "0", "--", "x=1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--repeats takes a number of rounds" in result.stderr, result.stderr
