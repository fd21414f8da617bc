"""scripts/run_study.py: runs trained, evaluated and analysed, results collected, figures and claims drawn,
finished runs skipped and unfinished ones resumed on a second call, runs named by their overrides, bad
overrides and runs made by hand refused before anything runs, the latest attempt's error reported."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]


def study(out, runs_root, *args, common=()):
    cmd = [sys.executable, "scripts/run_study.py", "--out", str(out), "--runs-root", str(runs_root),
           "--gpus", "--tasks", "val_loss", *args, "--", *common]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_study_trains_evaluates_analyses_and_collects(tiny_corpus, tmp_path):
    common = [*tiny_corpus, *TINY_MODEL, "model.max_seq_len=128", "trainer.max_steps=2", "trainer.batch_size=4",
              "trainer.eval_batches=1", "trainer.threads=1"]
    out, runs_root = tmp_path / "out", tmp_path / "runs"
    done = study(out, runs_root, "--grid", "attention=softmax,tda", "--analysis-args", "lengths=[64,128]",
                 "--eval-args", "max_batches=1", common=common)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    names = ["softmax-tiny-tiny-s0", "tda-tiny-tiny-s0"]
    for name in names:
        run = out / "runs" / name
        assert json.loads((run / "eval" / "val_loss.json").read_text())["loss"] > 0
        lengths = json.loads((run / "analysis" / "summary.json").read_text())["lengths"]
        assert [s["length"] for s in lengths] == [64, 128]
        assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
        assert not (run / "checkpoints").exists() and (runs_root / name / "checkpoints").is_dir()
    assert (out / "claims.md").read_text().count("|") > 20
    assert (out / "figures" / "sparsity_by_layer.png").is_file()

    again = study(out, runs_root, "--grid", "attention=softmax,tda", common=common)
    assert again.returncode == 0 and again.stdout.count("already in") == 2

    (out / "claims.md").unlink()
    undrawn = study(out, runs_root, "--grid", "attention=softmax,tda", "--no-figures", common=common)
    assert undrawn.returncode == 0 and not (out / "claims.md").exists()
    assert "not drawn (--no-figures): python -m analysis.report" in undrawn.stdout, undrawn.stdout[-2000:]

    bad = study(tmp_path / "bad", runs_root, "--runs", "attention=nonexistent", common=common)
    assert bad.returncode != 0 and "error" in bad.stdout + bad.stderr
    assert not (tmp_path / "bad").exists()


def load_run_study(monkeypatch):
    """scripts/run_study.py as a module whose lanes stop the study at its first run (see _FirstRunOnly)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_study", ROOT / "scripts" / "run_study.py")
    run_study = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "run_study", run_study)
    spec.loader.exec_module(run_study)
    monkeypatch.setattr(run_study, "Lane", _FirstRunOnly)
    return run_study


def test_relative_runs_root_is_the_project_roots_from_any_directory(tmp_path, monkeypatch):
    """An existing run of a study under a relative runs root (which train.py reads from the project root)
    is resumed, and a relative --out is the caller's, wherever the study is launched from; the commands name
    the run relative to the project root (where they run), so no saved config or log names the machine's folders."""
    import shutil

    run_study = load_run_study(monkeypatch)
    runs_root = ROOT / "runs" / ".test-run-study"
    (runs_root / "softmax-tiny-builtin-s0").mkdir(parents=True, exist_ok=True)
    (runs_root / "softmax-tiny-builtin-s0" / run_study.MARKER).write_text("")
    monkeypatch.chdir(tmp_path)
    try:
        run_study.main(["--out", "out", "--runs-root", "runs/.test-run-study", "--gpus", "--grid",
                        "attention=softmax", "--", "model=tiny"])
        raise AssertionError("no run was started")
    except _Started as started:
        assert "runs_root=runs/.test-run-study" in started.run.steps[0] and "resume=true" in started.run.steps[0]
        assert "run_dir=runs/.test-run-study/softmax-tiny-builtin-s0" in started.run.steps[1]
        assert run_study.shown(started.run.steps[1]).startswith("python eval.py run_dir=runs/")
        assert started.log == tmp_path / "out" / "logs" / "softmax-tiny-builtin-s0.log"
    finally:
        shutil.rmtree(runs_root)


def test_a_grid_over_a_setting_names_each_run_by_its_value(tmp_path, monkeypatch, capsys):
    """The default name shows attention, model, data and seed; a run's other overrides follow the attention."""
    run_study = load_run_study(monkeypatch)
    with pytest.raises(_Started):
        run_study.main(["--out", str(tmp_path / "out"), "--runs-root", str(tmp_path / "runs"), "--gpus",
                        "--grid", "attention.beta=0.5,1.0", "optim.lr=1e-3", "--runs", "attention=softmax seed=1",
                        "--", "model=tiny"])
    planned = capsys.readouterr().out.split("(cpu): ", 1)[1].split()
    assert planned == ["tda-beta0.5-lr1e-3-tiny-builtin-s0,", "tda-beta1.0-lr1e-3-tiny-builtin-s0,",
                       "softmax-tiny-builtin-s1"]


def test_a_run_made_by_hand_is_not_taken_over(tmp_path, monkeypatch, capsys):
    """A study resumes only the run directories it started (marked): a run of the same name made with
    train.py stops the study before anything starts, and the run is left as it was."""
    run_study = load_run_study(monkeypatch)
    manual = tmp_path / "runs" / "softmax-tiny-builtin-s0"
    manual.mkdir(parents=True)
    (manual / "config.yaml").write_text("name: softmax-tiny-builtin-s0\n")
    with pytest.raises(SystemExit, match=f"{manual} exists but no study started it"):
        run_study.main(["--out", str(tmp_path / "out"), "--runs-root", str(tmp_path / "runs"), "--gpus",
                        "--grid", "attention=softmax", "--", "model=tiny"])
    assert sorted(p.name for p in manual.iterdir()) == ["config.yaml"] and not (tmp_path / "out").exists()


def test_the_failure_report_shows_the_latest_attempts_error(tiny_corpus, tmp_path):
    common = [*tiny_corpus, *TINY_MODEL, "trainer.max_steps=1", "trainer.batch_size=4", "trainer.threads=1"]
    out, runs_root = tmp_path / "out", tmp_path / "runs"
    first = study(out, runs_root, "--runs", "attention=softmax", common=[*common, "optim.lr=-1"])
    assert first.returncode == 1 and "error: optim.lr must be" in first.stdout, first.stdout[-3000:]
    second = study(out, runs_root, "--runs", "attention=softmax", common=[*common, "optim.eps=-1"])
    assert second.returncode == 1 and "error: optim.eps must be" in second.stdout, second.stdout[-3000:]
    assert "optim.lr must be" not in second.stdout  # the first attempt's error, earlier in the same log


def test_a_second_study_resumes_the_run_it_started_on_the_shipped_builtin_data(tmp_path):
    """data=builtin as shipped (data.dir an interpolation): the study's run trained, then failed at
    evaluation; the same study again resumes the run (train.py resume=true) instead of stopping there."""
    common = ["model=tiny", "model.n_layer=1", "model.n_embd=32", "model.seq_len=64", "trainer.max_steps=2",
              "trainer.batch_size=4", "trainer.eval_batches=1", "trainer.threads=1"]
    out, runs_root = tmp_path / "out", tmp_path / "runs"
    log = out / "logs" / "softmax-tiny-builtin-s0.log"
    for attempt in range(2):
        done = study(out, runs_root, "--runs", "attention=softmax", "--tasks", "no_such_task", common=common)
        assert done.returncode == 1 and "unknown task(s) no_such_task" in done.stdout, done.stdout[-3000:]
        assert (runs_root / "softmax-tiny-builtin-s0" / ".run_study").is_file()
    second_attempt = log.read_text().split("$ ")[3]  # train, eval; then train again
    assert "train.py" in second_attempt and "resume=true" in second_attempt
    assert "resuming at step 2" in second_attempt and "error" not in second_attempt


class _Started(Exception):
    def __init__(self, run, log):
        super().__init__(run.name)
        self.run, self.log = run, log


class _FirstRunOnly:
    """Stands in for a lane: stops the study at its first run, handing over what it was given."""

    def __init__(self, device):
        self.device, self.run = device, None

    def start(self, run, log_path):
        raise _Started(run, log_path)


def test_chunks_split_the_planned_runs_into_consecutive_parts_that_cover_each_run_once(tmp_path, monkeypatch, capsys):
    """--chunk K/N runs the K-th of N consecutive parts; the N parts together are the plan, each run once.
    --dry-run prints the chunk's runs and their commands and starts nothing."""
    run_study = load_run_study(monkeypatch)
    base = ["--out", str(tmp_path / "out"), "--runs-root", str(tmp_path / "runs"), "--gpus", "--grid",
            "attention.beta=0.25,0.5,0.75,1.0,1.25", "--dry-run"]
    parts = []
    for k in (1, 2, 3):
        assert run_study.main([*base, "--chunk", f"{k}/3", "--", "model=tiny"]) == 0
        printed = capsys.readouterr().out
        parts.append([line.split()[1] for line in printed.splitlines() if line.startswith("[study] tda-")])
        assert "train.py" in printed and f"{len(parts[-1])} runs planned, nothing started" in printed
    assert [len(p) for p in parts] == [1, 2, 2]
    assert sum(parts, []) == [f"tda-beta{b}-tiny-builtin-s0" for b in ("0.25", "0.5", "0.75", "1.0", "1.25")]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()
    for bad in ("0/3", "4/3", "2", "a/b"):
        with pytest.raises(SystemExit, match=f"--chunk takes K/N with 1 <= K <= N, e.g. 1/2, got '{bad}'"):
            run_study.main([*base, "--chunk", bad, "--", "model=tiny"])


def test_a_value_the_model_refuses_stops_the_study_before_anything_runs(tmp_path, monkeypatch):
    """Planning builds each run's model without weights, so a value only the model checks stops the study."""
    run_study = load_run_study(monkeypatch)
    with pytest.raises(SystemExit, match="attention.lambda_mode must be one of .* got 'clmap'"):
        run_study.main(["--out", str(tmp_path / "out"), "--runs-root", str(tmp_path / "runs"), "--gpus", "--grid",
                        "attention=tda", "attention.lambda_mode=clmap", "--", "model=tiny"])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()
