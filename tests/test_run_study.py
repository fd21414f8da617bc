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
