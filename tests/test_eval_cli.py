"""eval.py end to end on a tiny trained run: every promised file, and one-line errors for bad input."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import eval as evaluation_entry

ROOT = Path(__file__).resolve().parents[1]


def compose_eval(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="eval", overrides=list(overrides))


@pytest.fixture(scope="module")
def run_dir(train_run):
    return train_run("name=eval-tda", "attention=tda", "trainer.max_steps=20")


SMALL = ["max_batches=2", "length.multiples=[1,2]", "length.tokens=256", "passkey.lengths=[400]",
         "passkey.depths=[0.0,1.0]", "passkey.num_keys=[1,2]", "passkey.trials=1", "passkey.candidates=3",
         "zero_shot.tasks=[hellaswag]", "sample.max_new_tokens=16", "sample.num_samples=2"]


def test_eval_writes_every_file_it_promises(run_dir, capsys):
    tasks = "tasks=[val_loss,length_extrapolation,passkey,zero_shot,sample]"
    out = evaluation_entry.evaluate(compose_eval([f"run_dir={run_dir}", tasks, *SMALL]))
    assert out == Path(run_dir) / "eval"
    for name in ["val_loss.json", "length_extrapolation.json", "passkey.json", "zero_shot.json", "sample.json",
                 "results.md"] + [f"{stem}.{ext}" for stem in ("val_loss_by_position", "length_extrapolation",
                                                              "length_loss_by_position", "passkey_heatmap")
                                  for ext in ("png", "pdf")]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    val = json.loads((out / "val_loss.json").read_text())
    assert val["step"] == 20 and val["seq_len"] == 64 and len(val["loss_by_position"]) == 64
    assert val["perplexity"] == pytest.approx(2.718281828 ** val["loss"])
    length = json.loads((out / "length_extrapolation.json").read_text())["lengths"]
    assert [e["seq_len"] for e in length.values()] == [64, 128]
    assert length["1x"]["ntk"] == length["1x"]["plain"] and length["2x"]["ntk"] != length["2x"]["plain"]
    passkey = json.loads((out / "passkey.json").read_text())
    assert set(passkey["accuracy"]) == {"1_keys", "2_keys"}
    assert all(0 <= v <= 1 for acc in passkey["accuracy"].values() for v in acc.values())
    assert len(passkey["grid"]["2_keys"]["likelihood"]) == 1 and len(passkey["grid"]["2_keys"]["exact"][0]) == 2
    zero_shot = json.loads((out / "zero_shot.json").read_text())
    assert zero_shot["hellaswag"]["status"] == "not run" and zero_shot["hellaswag"]["reason"]
    sample = json.loads((out / "sample.json").read_text())
    assert len(sample["texts"]) == 2
    table = (out / "results.md").read_text()
    for row in ["| val_loss | 20 | perplexity |", "| length_extrapolation | 20 | lengths/2x/ntk/perplexity |",
                "| passkey | 20 | accuracy/2_keys/likelihood |", "| zero_shot | 20 | hellaswag/status | not run |"]:
        assert row in table
    assert "--- sample 1 ---" in capsys.readouterr().out


@pytest.mark.parametrize("overrides,match", [
    (["tasks=[val_loss,bogus]"], "unknown task(s) bogus"),
    (["tasks=[length_extrapolation]", "length.multiples=[1,16]"], "exceeds the model's max_seq_len=512"),
    (["tasks=[val_loss]", "seq_len=1024"], "seq_len=1024 exceeds"),
    (["tasks=[passkey]", "passkey.lengths=[100]"], "too short"),
    (["tasks=[passkey]", "passkey.lengths=[4096]"], "exceeds the model's max_seq_len"),
    (["tasks=[passkey]", "passkey.lengths=[400]", "passkey.num_keys=[1]", "passkey.candidates=1"], "passkey.candidates must be >= 2"),
])
def test_bad_options_are_one_line_value_errors(run_dir, overrides, match):
    with pytest.raises(ValueError) as err:
        evaluation_entry.evaluate(compose_eval([f"run_dir={run_dir}", *overrides]))
    assert match in str(err.value) and "\n" not in str(err.value)


def test_run_without_checkpoint_is_a_one_line_error_with_exit_code_2(run_dir, tmp_path):
    empty = tmp_path / "no-checkpoint"
    empty.mkdir()
    shutil.copy(Path(run_dir) / "config.yaml", empty / "config.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"run_dir={empty}"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: run directory {empty} has no complete checkpoint"]


def test_zero_shot_without_the_harness_reports_each_task_not_run(run_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    out = evaluation_entry.evaluate(compose_eval([f"run_dir={run_dir}", "tasks=[zero_shot]",
                                                  "zero_shot.tasks=[piqa,winogrande]"]))
    result = json.loads((out / "zero_shot.json").read_text())
    assert set(result) == {"step", "piqa", "winogrande"}
    assert all(result[t]["status"] == "not run" and "pip install lm_eval" in result[t]["reason"]
               for t in ("piqa", "winogrande"))
