"""eval.py end to end on a tiny trained run: every promised file, and one-line errors for bad input."""
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import eval as evaluation_entry
from analysis.measures import passkey_accuracy
from data.tokenizer import get_tokenizer
from evaluation.passkey_prompt import make_prompt

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
    # the kept curve is rounded to 1e-4 nats, so its mean is the unrounded summary loss to within that
    assert abs(sum(val["loss_by_position"]) / 64 - val["loss"]) <= 0.5e-4
    assert all(round(x, 4) == x for x in val["loss_by_position"])
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
    (["tasks=[length_extrapolation]", "length.multiples=[16]"], "exceeds the model's max_seq_len=512"),
    (["tasks=[val_loss]", "seq_len=1024"], "seq_len=1024 exceeds"),
    (["tasks=[passkey]", "passkey.lengths=[100]"], "too short"),
    (["tasks=[passkey]", "passkey.lengths=[4096]"], "exceeds the model's max_seq_len"),
    (["tasks=[passkey]", "passkey.lengths=[400]", "passkey.num_keys=[1]", "passkey.candidates=1"], "passkey.candidates must be an int >= 2"),
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


def run_eval_cli(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "eval.py"), *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def test_default_tasks_of_a_study_skip_and_name_the_prompts_that_cannot_fit(run_dir):
    # run_study's default tasks with eval.yaml's default lengths (1, 2, 4, 8 x 64 tokens, the model's
    # max_seq_len=512): the longest prompts need more than some of these lengths
    enc = get_tokenizer("bytes")
    lengths, keys = [64, 128, 256, 512], [1, 2, 4]

    def fits(length, n):
        try:
            make_prompt(enc, length, 0.5, n, random.Random(0))
            return True
        except ValueError:
            return False

    cannot = {(n, length) for n in keys for length in lengths if not fits(length, n)}
    assert cannot and len(cannot) < len(keys) * len(lengths) and (4, 512) in cannot
    out = evaluation_entry.evaluate(compose_eval([
        f"run_dir={run_dir}", "tasks=[val_loss,length_extrapolation,passkey]", "max_batches=1", "length.tokens=512",
        "passkey.depths=[0.5]", "passkey.trials=1", "passkey.candidates=2"]))
    passkey = json.loads((out / "passkey.json").read_text())
    assert passkey["lengths"] == lengths
    skipped = {(int(k.split("_")[0]), int(length)): why for k, cells in passkey["skipped"].items()
               for length, why in cells.items()}
    assert set(skipped) == cannot
    assert all(f"length={length} is too short for a passkey prompt with {n} key(s)" in why
               for (n, length), why in skipped.items())
    for n in keys:
        rows = passkey["grid"][f"{n}_keys"]["exact"]
        assert [row is None for row in rows] == [(n, length) in cannot for length in lengths]
        ran = [v for row in rows if row is not None for v in row]
        assert passkey["accuracy"][f"{n}_keys"]["exact"] == (pytest.approx(sum(ran) / len(ran)) if ran else None)
    table = (out / "results.md").read_text()
    for n, length in cannot:
        assert f"| passkey | 20 | skipped/{n}_keys/{length} | length={length} is too short" in table
    # analysis.report reads such a file: skipped rows are left out of the averages
    run = type("Run", (), {"eval_result": lambda self, task: passkey})()
    ran_512 = [v for n in keys if (n, 512) not in cannot for v in passkey["grid"][f"{n}_keys"]["exact"][-1]]
    assert passkey_accuracy(run, 512) == pytest.approx(sum(ran_512) / len(ran_512))
    assert passkey_accuracy(run, None) is not None
    length = json.loads((out / "length_extrapolation.json").read_text())
    assert [e["seq_len"] for e in length["lengths"].values()] == lengths and length["skipped"] == {}


def test_lengths_beyond_max_seq_len_are_skipped_and_named(run_dir):
    out = evaluation_entry.evaluate(compose_eval([
        f"run_dir={run_dir}", "tasks=[length_extrapolation,passkey]", "length.multiples=[1,16]", "length.tokens=128",
        "passkey.lengths=[400,1024]", "passkey.num_keys=[1]", "passkey.depths=[0.5]", "passkey.trials=1",
        "passkey.candidates=2"]))
    length = json.loads((out / "length_extrapolation.json").read_text())
    assert list(length["lengths"]) == ["1x"]
    assert length["skipped"] == {"16x": "16 x the training length 64 = 1024 tokens exceeds the model's "
                                        "max_seq_len=512"}
    passkey = json.loads((out / "passkey.json").read_text())
    assert passkey["skipped"] == {"1_keys": {"1024": "length 1024 exceeds the model's max_seq_len=512"}}
    assert passkey["grid"]["1_keys"]["exact"][1] is None and len(passkey["grid"]["1_keys"]["exact"][0]) == 1
    assert "| length_extrapolation | 20 | skipped/16x | 16 x the training length" in (out / "results.md").read_text()


def test_without_run_dir_one_error_line_names_run_dir():
    proc = run_eval_cli()
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: run_dir= is required") and "runs/<name>" in lines[0]


@pytest.mark.parametrize("override,match", [
    ("foo=1", "error: eval.py has no option foo: the options are run_dir, tasks,"),
    ("passkey.foo=1", "error: eval.py has no option passkey.foo: the passkey options are passkey.lengths,"),
    ("tasks=[val_loss,", "error: no viable alternative at input"),
])
def test_unknown_options_and_unreadable_overrides_are_one_error_line(override, match, tmp_path):
    proc = run_eval_cli(f"run_dir={tmp_path}", override)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(match)


@pytest.mark.parametrize("overrides,match", [
    (["tasks=[passkey]", "passkey.lengths=abc"], "passkey.lengths must be a list of ints >= 1 or null"),
    (["tasks=[passkey]", "passkey.lengths=[400,abc]"], "passkey.lengths must be a list of ints"),
    (["tasks=[passkey]", "passkey.depths=abc"], "passkey.depths must be a list of numbers in [0.0, 1.0]"),
    (["tasks=[passkey]", "passkey.num_keys=abc"], "passkey.num_keys must be a list of ints >= 1"),
    (["tasks=[passkey]", "passkey.trials=abc"], "passkey.trials must be an int >= 1"),
    (["tasks=[passkey]", "passkey=3"], "passkey must be a group of options"),
    (["tasks=[val_loss]", "seq_len=abc"], "seq_len must be an int >= 1 or null"),
    (["tasks=[length_extrapolation]", "length.tokens=abc"], "length.tokens must be an int >= 1"),
    (["tasks=[sample]", "sample.max_new_tokens=abc"], "sample.max_new_tokens must be an int >= 1"),
    (["tasks=[sample]", "sample.top_k=abc"], "sample.top_k must be an int >= 1 or null"),
    (["tasks=[zero_shot]", "zero_shot.tasks=3"], "zero_shot.tasks must be a non-empty list of names"),
    (["tasks=[zero_shot]", "zero_shot.limit=abc"], "zero_shot.limit must be an int >= 1 or null"),
    (["device=foo"], "device must be auto, cpu, cuda or cuda:<index>, got 'foo'"),
    (["checkpoint=no/such/folder"], "checkpoint=no/such/folder: no such folder"),
])
def test_bad_values_are_one_line_errors_naming_the_key(run_dir, overrides, match):
    with pytest.raises(ValueError) as err:
        evaluation_entry.evaluate(compose_eval([f"run_dir={run_dir}", *overrides]))
    assert match in str(err.value) and "\n" not in str(err.value)


def test_a_bad_value_on_the_command_line_exits_2_with_the_key_named(run_dir):
    proc = run_eval_cli(f"run_dir={run_dir}", "tasks=[passkey]", "passkey.lengths=abc")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: passkey.lengths must be a list of ints >= 1 or null, e.g. passkey.lengths=[1,2], got 'abc'"]
