"""Distributed training on CPU with torchrun and gloo: DDP and FSDP2, with and without context parallelism, equal one
process for the same global batch; SIGKILL, SIGTERM, torchrun restarts and damaged checkpoints all end in exact
continuations."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from tests.conftest import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["trainer.batch_size=8", "trainer.micro_batch_size=2", "trainer.eval_batches=2", "logger.log_every=1",
          "logger.progress=false", "optim.warmup_steps=2", "trainer.threads=1", "trainer.eval_every=100"]


def losses(run_dir):
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r}


def final_val_loss(run_dir):
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["val_loss"] for r in lines if "val_loss" in r][-1]


def launch(args, processes, runs_root, extra_torchrun=()):
    """Start train.py (under torchrun when processes > 0) in its own process group."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if processes:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               *extra_torchrun, str(ROOT / "train.py")]
    else:
        cmd = [sys.executable, str(ROOT / "train.py")]
    return subprocess.Popen(cmd + [*args, f"runs_root={runs_root}"], cwd=runs_root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def run(args, processes, runs_root, **kw):
    code, out = finish(launch(args, processes, runs_root, **kw))
    assert code == 0, out[-3000:]
    return out


def wait_for(predicate, proc, timeout=240):
    start = time.monotonic()
    while not predicate():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() - start < timeout, "timed out waiting"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def reference_runs(train_run):
    """One process, global batch 8, micro-batches of 2: the runs the distributed ones must reproduce."""
    cache = {}

    def get(attention):
        if attention not in cache:
            cache[attention] = train_run(f"name=dist-reference-{attention}", f"attention={attention}",
                                         "trainer.max_steps=8", "trainer.checkpoint_every=4",
                                         *[a for a in COMMON if not a.startswith(("logger.progress", "trainer.threads"))])
        return cache[attention]

    return get


@pytest.fixture(scope="module")
def reference_run(reference_runs):
    return reference_runs("tda")


def distributed_run(strategy, tiny_corpus, runs_root, processes=2, attention="tda", name="two", context=1):
    micro = ["trainer.micro_batch_size=1"] if processes == 8 else []
    run([*tiny_corpus, *TINY_MODEL, *COMMON, f"trainer.strategy={strategy}", f"name={name}", f"attention={attention}",
         "trainer.max_steps=8", "trainer.checkpoint_every=4", f"trainer.context_parallel={context}", *micro],
        processes, runs_root)
    return runs_root / name


@pytest.fixture(scope="module")
def ddp_run(tiny_corpus, tmp_path_factory):
    """Two DDP processes, uninterrupted: what interrupted two-process runs must reproduce exactly."""
    return distributed_run("ddp", tiny_corpus, tmp_path_factory.mktemp("ddp"))


# (attention, strategy, processes, steps compared, tolerance). Softmax runs equal one process to float
# rounding at every step. TDA's do for the first steps only: its gradient is very sensitive to rounding
# (the threshold's kink and the per-head RMSNorm with eps 1e-6 over rows whose raw output is ~1e-3), so
# the order of float sums, which differs with the number of processes, shows at 1e-5 by step 5 or 6.
EQUIVALENCE = [("softmax", "ddp", 2, 8, 2e-6), ("softmax", "fsdp2", 2, 8, 2e-6), ("softmax", "ddp", 8, 8, 2e-6),
               ("tda", "ddp", 2, 5, 1e-5), ("tda", "fsdp2", 2, 5, 1e-5), ("tda", "ddp", 8, 4, 1e-5)]


@pytest.mark.parametrize("attention,strategy,processes,steps,tolerance", EQUIVALENCE,
                         ids=[f"{a}-{s}-{p}" for a, s, p, _, _ in EQUIVALENCE])
def test_n_processes_equal_one_for_the_same_global_batch(attention, strategy, processes, steps, tolerance,
                                                         tiny_corpus, reference_runs, ddp_run, tmp_path):
    if (attention, strategy, processes) == ("tda", "ddp", 2):
        run_dir = ddp_run
    else:
        run_dir = distributed_run(strategy, tiny_corpus, tmp_path, processes, attention)
    got, want = losses(run_dir), losses(reference_runs(attention))
    assert sorted(got) == sorted(want) == list(range(1, 9))
    for step in range(1, steps + 1):
        assert abs(got[step] - want[step]) < tolerance, (step, got[step], want[step])


def test_sigkill_then_resume_gives_the_uninterrupted_losses(tiny_corpus, ddp_run, tmp_path):
    args = [*tiny_corpus, *TINY_MODEL, *COMMON, "trainer.strategy=ddp", "name=killed", "trainer.max_steps=8",
            "trainer.checkpoint_every=4"]
    code, out = finish(launch(args + ["trainer.stop_after_step=6"], 2, tmp_path))  # both workers SIGKILLed
    run_dir = tmp_path / "killed"
    assert code != 0 and "Signal 9 (SIGKILL)" in out
    assert max(losses(run_dir)) == 6 and latest_checkpoint(run_dir).name == "step_0000004"
    run(args + ["resume=true"], 2, tmp_path)
    assert losses(run_dir) == losses(ddp_run)  # bit-identical; steps 5 and 6 are not logged twice


def test_torchrun_restart_resumes_by_itself(tiny_corpus, ddp_run, tmp_path):
    args = [*tiny_corpus, *TINY_MODEL, *COMMON, "trainer.strategy=ddp", "name=restarted", "trainer.max_steps=8",
            "trainer.checkpoint_every=4", "trainer.stop_after_step=6"]  # crashes after step 6, first attempt only
    out = run(args, 2, tmp_path, extra_torchrun=["--max-restarts=1"])
    assert "resuming at step 4" in out
    assert losses(tmp_path / "restarted") == losses(ddp_run)  # bit-identical


def test_torchrun_restart_resumes_a_run_of_the_shipped_builtin_data(tmp_path):
    """data=builtin as shipped: its data.dir is an interpolation in the config and resolved in the saved
    config.yaml; the restarted job's resume must take them for the same setting."""
    args = [*TINY_MODEL, *COMMON, "trainer.strategy=ddp", "name=restarted-builtin", "trainer.max_steps=4",
            "trainer.checkpoint_every=2", "trainer.stop_after_step=3"]  # crashes after step 3, first attempt only
    out = run(args, 2, tmp_path, extra_torchrun=["--max-restarts=1"])
    assert "resuming at step 2" in out
    lines = [json.loads(x) for x in (tmp_path / "restarted-builtin" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]  # step 3 logged once, by the restarted job


@pytest.mark.parametrize("processes", [0, 2])
def test_sigterm_saves_a_complete_checkpoint_and_exits_zero(processes, tiny_corpus, tmp_path):
    strategy = "ddp" if processes else "single"
    proc = launch([*tiny_corpus, *TINY_MODEL, *COMMON, f"trainer.strategy={strategy}", "name=preempted",
                   "trainer.max_steps=100000", "trainer.checkpoint_every=100000"], processes, tmp_path)
    run_dir = tmp_path / "preempted"
    wait_for(lambda: (run_dir / "metrics.jsonl").is_file() and len(losses(run_dir)) >= 2, proc)
    if processes:  # as a cluster does: every worker gets the signal
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == processes
        for pid in workers:
            os.kill(int(pid), signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert code == 0, out[-3000:]
    newest = latest_checkpoint(run_dir)
    assert newest is not None and f"saved step {int(newest.name.split('_')[1])}" in out


def test_truncated_checkpoint_is_skipped_for_the_previous_one(tmp_path):
    for step in (2, 4):
        save_checkpoint(tmp_path, step, {"w": [step] * 1000}, {"step": step})
    newest = list_checkpoints(tmp_path)[-1]
    data = (newest / "model.pt").read_bytes()
    (newest / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="skipping checkpoint .*step_0000004.*truncated"):
        assert latest_checkpoint(tmp_path).name == "step_0000002"


def test_a_changed_world_size_resumes_with_the_same_global_batch(tiny_corpus, reference_run, tmp_path):
    args = [*tiny_corpus, *TINY_MODEL, *COMMON, "name=resized", "trainer.max_steps=8", "trainer.checkpoint_every=4"]
    code, out = finish(launch(args + ["trainer.strategy=ddp", "trainer.stop_after_step=5"], 2, tmp_path))
    assert code != 0 and latest_checkpoint(tmp_path / "resized").name == "step_0000004", out[-3000:]
    out = run(args + ["resume=true"], 0, tmp_path)  # one process continues what two started
    assert "written by 2 processes, this run has 1" in out
    got, want = losses(tmp_path / "resized"), losses(reference_run)
    assert sorted(got) == list(range(1, 9))
    assert all(abs(got[s] - want[s]) < 1e-4 for s in want)  # same data and model; float sums in another order



@pytest.fixture(scope="module")
def context_run(tiny_corpus, tmp_path_factory):
    """Two DDP processes splitting every sequence (trainer.context_parallel=2), uninterrupted."""
    return distributed_run("ddp", tiny_corpus, tmp_path_factory.mktemp("context"), attention="softmax",
                           name="context", context=2)


# (attention, strategy, processes, context-parallel size, steps compared, tolerance), as EQUIVALENCE; 4 processes in
# context groups of 2 are two data-parallel ranks. tests/test_context_parallel.py compares every variant's gradients.
CONTEXT_EQUIVALENCE = [("softmax", "ddp", 2, 2, 8, 2e-6), ("softmax", "fsdp2", 4, 2, 8, 2e-6),
                       ("tda", "ddp", 2, 2, 4, 1e-5)]


@pytest.mark.parametrize("attention,strategy,processes,context,steps,tolerance", CONTEXT_EQUIVALENCE,
                         ids=[f"{a}-{s}-{p}-cp{c}" for a, s, p, c, _, _ in CONTEXT_EQUIVALENCE])
def test_sequences_split_over_processes_equal_one_process(attention, strategy, processes, context, steps, tolerance,
                                                          tiny_corpus, reference_runs, context_run, tmp_path):
    if (attention, strategy, processes) == ("softmax", "ddp", 2):
        run_dir = context_run
    else:
        run_dir = distributed_run(strategy, tiny_corpus, tmp_path, processes, attention, context=context)
    got, want = losses(run_dir), losses(reference_runs(attention))
    assert sorted(got) == sorted(want) == list(range(1, 9))
    for step in range(1, steps + 1):
        assert abs(got[step] - want[step]) < tolerance, (step, got[step], want[step])
    if steps == 8:  # the validation loss at the end, each validation sequence split like the training ones
        assert abs(final_val_loss(run_dir) - final_val_loss(reference_runs(attention))) < tolerance
    # the attention diagnostics of the last step ran on rank 0 alone, with the split off (no collective to hang);
    # FSDP2 skips them (each process holds a shard of every block)
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["step"] == 8 and ("diag/empty_rows/mean" in last) == (strategy != "fsdp2")


def test_a_killed_context_parallel_run_resumes_exactly(tiny_corpus, context_run, tmp_path):
    args = [*tiny_corpus, *TINY_MODEL, *COMMON, "trainer.strategy=ddp", "trainer.context_parallel=2",
            "attention=softmax", "name=context", "trainer.max_steps=8", "trainer.checkpoint_every=4"]
    code, out = finish(launch(args + ["trainer.stop_after_step=6"], 2, tmp_path))  # both workers SIGKILLed
    assert code != 0 and latest_checkpoint(tmp_path / "context").name == "step_0000004", out[-3000:]
    run(args + ["resume=true"], 2, tmp_path)
    assert losses(tmp_path / "context") == losses(context_run)  # bit-identical
