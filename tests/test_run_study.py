"""scripts/run_study.py: runs trained, evaluated and analysed, results collected, figures and claims drawn,
finished runs skipped on a second call, bad overrides refused before anything runs."""
import json
import subprocess
import sys
from pathlib import Path

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

    bad = study(tmp_path / "bad", runs_root, "--runs", "attention=nonexistent", common=common)
    assert bad.returncode != 0 and "error" in bad.stdout + bad.stderr
    assert not (tmp_path / "bad").exists()


def test_relative_runs_root_is_the_project_roots_from_any_directory(tmp_path, monkeypatch):
    """An existing run under a relative runs root (which train.py reads from the project root) is resumed,
    and a relative --out is the caller's, wherever the study is launched from."""
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("run_study", ROOT / "scripts" / "run_study.py")
    run_study = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "run_study", run_study)
    spec.loader.exec_module(run_study)
    monkeypatch.setattr(run_study, "Lane", _FirstRunOnly)
    runs_root = ROOT / "runs" / ".test-run-study"
    (runs_root / "softmax-tiny-builtin-s0").mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path)
    try:
        run_study.main(["--out", "out", "--runs-root", "runs/.test-run-study", "--gpus", "--grid",
                        "attention=softmax", "--", "model=tiny"])
        raise AssertionError("no run was started")
    except _Started as started:
        assert f"runs_root={runs_root}" in started.run.steps[0] and "resume=true" in started.run.steps[0]
        assert started.log == tmp_path / "out" / "logs" / "softmax-tiny-builtin-s0.log"
    finally:
        shutil.rmtree(runs_root)


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
