"""Pretrain a GPT with the attention of your choice.

    python train.py                                   # TDA, tiny model, built-in corpus (CPU or GPU)
    python train.py attention=softmax optim.lr=1e-3   # any config value from the command line
    python train.py -m attention=softmax,tda seed=0,1 # a sweep: one run directory per job
    python train.py name=<run> resume=true            # continue a run exactly where it stopped
    torchrun --nproc_per_node=8 train.py trainer.strategy=ddp     # or fsdp2; one node or many

Everything a run writes goes to runs/<name>/ (see model/checkpoint.py for the layout), and only once every
check has passed. The global batch (trainer.batch_size sequences) is fixed: each of N processes reads its
own batch_size/N rows of it, in micro-batches of trainer.micro_batch_size, so 1, 2 or 8 processes train the
same model on the same data. SIGTERM or SIGINT (a cluster's preemption) finishes the current step, saves a
checkpoint and exits 0; a restart by `torchrun --max-restarts` resumes by itself. The loop and its parts
are in training/.
"""
from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from training.config import ConfigError
from training.distributed import exit_without_teardown
from training.loop import train


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run_dir = train(cfg)
    except (ConfigError, FileNotFoundError, ValueError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(f"done: {run_dir}", flush=True)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and HydraConfig.get().mode == RunMode.RUN:
        exit_without_teardown()


if __name__ == "__main__":
    main()
