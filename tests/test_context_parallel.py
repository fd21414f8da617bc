"""Context parallelism (training/context_parallel.py): the zig-zag layout, and two gloo processes that split every
sequence giving one process's loss and gradients for every attention variant, in float64 so that the comparison
is tight (float32 would differ by the order of the sums, which the split changes)."""
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from model.attention import ATTENTIONS
from model.gpt import GPT
from tests.conftest import compose_train
from training.config import ConfigError, check_settings
from training.context_parallel import ContextParallel

VOCAB, T, BATCH = 61, 24, 2
# Every registered variant, plus TDA's second head layout with a learnable β and the re-parameterised λ.
CASES = {name: {"name": name} for name in sorted(ATTENTIONS)}
CASES["tda-extra_proj"] = {"name": "tda", "layout": "extra_proj", "beta_learnable": True, "lambda_mode": "reparam"}


def _model(attention: dict) -> GPT:
    torch.manual_seed(0)
    cfg = OmegaConf.create(dict(n_layer=2, n_embd=32, n_head=4, mlp_ratio=4, norm_eps=1e-5, rope_base=10000.0,
                                rope_ntk_factor=1.0, seq_len=T, max_seq_len=64))
    return GPT(cfg, OmegaConf.create(attention), VOCAB).double()


@pytest.mark.parametrize("size", [2, 3])
def test_zigzag_chunks_cover_each_sequence_once_at_their_positions(size):
    seq = torch.arange(2 * size * 5)[None]  # L = 5 tokens per chunk
    members = [ContextParallel(size, i, None, torch.device("cpu")) for i in range(size)]
    shards = [m.shard(seq) for m in members]
    assert all(s.shape == (1, 10) for s in shards)  # equal work: two chunks each
    assert sorted(torch.cat(shards, dim=1)[0].tolist()) == seq[0].tolist()
    for m, s in zip(members, shards):
        assert torch.equal(m.positions(10), s[0])  # the tokens' own absolute positions
        # chunk i's queries see the keys up to its own last position
        assert [(stop - start, keys) for start, stop, keys in m.chunks(10)] == \
            [(5, int(s[0, start:stop].max()) + 1) for start, stop, _ in m.chunks(10)]
    with pytest.raises(ValueError, match=f"do not split into 2 x {size} equal chunks"):
        members[0].shard(torch.zeros(1, 2 * size * 5 + 1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compare_worker(index: int, size: int, port: int, out: str) -> None:
    """One member of a context group: for each case, the whole-sequence loss and gradients (computed here alone)
    against the group's (this member's chunks, gradients averaged over the group as DDP would)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=index, world_size=size)
    context = ContextParallel(size, index, dist.new_group(list(range(size))), torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    idx = torch.randint(VOCAB, (BATCH, T + 1), generator=generator)
    x, y = idx[:, :-1], idx[:, 1:]
    report = {}
    for case, attention in CASES.items():
        for loss_chunk in (None, 7):  # the chunked loss (7 does not divide a member's 24 tokens) under the split
            model = _model(attention)
            model.loss_chunk = loss_chunk
            _, want = model(x, y)
            want.backward()
            want_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            model.zero_grad()
            model.split_context(context)
            _, got = model(context.shard(x), context.shard(y))
            got.backward()
            loss = got.detach().clone()
            dist.all_reduce(loss, group=context.group)
            errors = {"loss": abs(float(loss) / size - float(want.detach()))}
            for n, p in model.named_parameters():
                dist.all_reduce(p.grad, group=context.group)
                scale = float(want_grads[n].abs().max()) or 1.0
                errors[n] = float((p.grad / size - want_grads[n]).abs().max()) / scale
            report[f"{case}/loss_chunk={loss_chunk}"] = errors
    if index == 0:
        torch.save(report, out)
    dist.destroy_process_group()


def test_two_processes_splitting_each_sequence_equal_one_for_every_variant():
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "report.pt")
        mp.spawn(_compare_worker, args=(2, _free_port(), out), nprocs=2)
        report = torch.load(out)
    assert sorted({key.split("/")[0] for key in report}) == sorted(CASES)
    worst = {case: max(errors.items(), key=lambda item: item[1]) for case, errors in report.items()}
    assert all(error < 1e-11 for _, error in worst.values()), worst


def test_a_single_process_asked_to_split_sequences_is_told_to_launch_more(train_run):
    with pytest.raises(ConfigError, match=r"trainer.context_parallel=2 splits each sequence over 2 processes, but 1 "
                                          r"was launched: start a multiple of 2 \(torchrun"):
        train_run("name=cp-alone", "trainer.context_parallel=2", "trainer.max_steps=1")


@pytest.mark.parametrize("overrides,message", [
    (["trainer.context_parallel=2", "model.seq_len=66"],
     r"model.seq_len \(66\) must be divisible by 2 x trainer.context_parallel = 4"),
    (["trainer.context_parallel=true"], r"trainer.context_parallel must be an int >= 1, got True"),
    (["trainer.context_parallel=0"], r"trainer.context_parallel must be an int >= 1, got 0"),
    (["trainer.loss_chunk=0"], r"trainer.loss_chunk must be null or an int >= 1 \(tokens\), got 0"),
    (["trainer.compile=model", "trainer.strategy=fsdp2"], r"trainer.compile=model takes strategy single or ddp"),
], ids=["seq_len", "bool", "zero", "loss_chunk", "compile-fsdp2"])
def test_settings_context_parallelism_cannot_take_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_settings(compose_train(["model=tiny", *overrides]))


def test_an_odd_length_still_trains_without_context_parallelism():
    check_settings(compose_train(["model=tiny", "model.seq_len=65"]))
