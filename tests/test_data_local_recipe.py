"""The README's `local` data recipe on a small folder of .txt files, command after command: prepare with
the config's defaults, train on it, evaluate it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, WORDS

import eval as evaluation_entry
from data import prepare as prep
from data.meta import read_meta
from test_eval_cli import compose_eval

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_local_recipe_on_six_small_text_files(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = torch.Generator().manual_seed(0)
    for i in range(6):  # about 600 bytes each: the held-out one is fewer windows than one training batch
        words = [WORDS[j] for j in torch.randint(len(WORDS), (120,), generator=rng)]
        (corpus / f"doc{i}.txt").write_text(" ".join(words) + ".\n")
    paths, shards = f"[{corpus}/*.txt]", tmp_path / "shards"
    # the byte tokenizer keeps the model small; everything else is conf/data/local.yaml's default
    # (val_fraction=0.01: one document in 100, none of 6 by the rule alone)
    prep.main(["local", f"paths={paths}", f"dir={shards}", "tokenizer=bytes"])
    splits = read_meta(shards)["splits"]
    assert (splits["train"]["documents"], splits["val"]["documents"]) == (5, 1)
    windows = (splits["val"]["tokens"] - 1) // 64
    assert 0 < windows < 16  # fewer validation windows than trainer.batch_size
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    train = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "data=local", f"data.paths={paths}", f"data.dir={shards}",
         "data.tokenizer=bytes", *TINY_MODEL, "trainer.batch_size=16", "trainer.max_steps=2", "trainer.threads=1",
         "logger.progress=false", f"runs_root={tmp_path / 'runs'}", "name=local"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert train.returncode == 0, train.stderr[-2000:]
    assert f"only {windows} window(s)" in train.stderr
    run_dir = tmp_path / "runs" / "local"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in m for m in metrics)
    out = evaluation_entry.evaluate(compose_eval([f"run_dir={run_dir}", "tasks=[val_loss,length_extrapolation]",
                                                  "batch_size=16"]))
    val = json.loads((out / "val_loss.json").read_text())
    assert val["sequences"] == windows  # batch_size > windows: one batch of every window
    length = json.loads((out / "length_extrapolation.json").read_text())
    fits = {f"{m}x": (splits["val"]["tokens"] - 1) // (64 * m) > 0 for m in (1, 2, 4, 8)}  # eval.yaml's multiples
    assert set(length["lengths"]) == {m for m, ok in fits.items() if ok}
    assert set(length["skipped"]) == {m for m, ok in fits.items() if not ok}
    assert all("holds no window" in why for why in length["skipped"].values())
