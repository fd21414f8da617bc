"""Training on a GPU with trainer.cuda_graphs: the compiled model's graphs replayed as CUDA graphs train with the
losses of the same compiled model without them, step by step (gradient accumulation over two micro-batches, so a
gradient left in a graph's memory and overwritten by the next replay would show), and validate alike."""
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def logged(run_dir: Path) -> tuple[dict[int, float], dict[int, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return ({r["step"]: r["loss"] for r in records if "loss" in r},
            {r["step"]: r["val_loss"] for r in records if "val_loss" in r})


@pytest.mark.parametrize("attention", ["softmax", "tda"])
@pytest.mark.parametrize("scope", ["model", "blocks"])
def test_cuda_graphs_train_with_the_losses_of_the_compiled_model(train_run, attention, scope):
    common = [f"attention={attention}", f"trainer.compile={scope}", "trainer.max_steps=8", "trainer.batch_size=8",
              "trainer.micro_batch_size=4", "logger.log_every=1", "trainer.eval_every=4", "trainer.loss_chunk=100"]
    plain = logged(train_run(f"name=graphs-off-{attention}-{scope}", *common))
    graphs = logged(train_run(f"name=graphs-on-{attention}-{scope}", *common, "trainer.cuda_graphs=true"))
    assert sorted(plain[0]) == sorted(graphs[0]) == list(range(1, 9)) and sorted(graphs[1]) == [4, 8]
    for step in plain[0]:
        assert graphs[0][step] == pytest.approx(plain[0][step], rel=1e-5, abs=1e-6), step
    for step in plain[1]:
        assert graphs[1][step] == pytest.approx(plain[1][step], rel=1e-5, abs=1e-6), step
