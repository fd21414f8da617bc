"""The training loop and its parts, one job per module (train.py is the Hydra entry point):

    loop.py           train(cfg): prepare a run (every check, nothing written), open its directory, step
    config.py         ConfigError and every check of the config and the run directory; the batch layout
    distributed.py    torchrun's environment, the process group, DDP / FSDP2 wrapping, gradient sync
    schedule.py       the learning rate: warm-up, then cosine, wsd or constant
    checkpointing.py  save and restore a run's full state (model/checkpoint.py owns the format), init_from
    rng.py            seeding, saving and restoring every random state
    metrics.py        metrics.jsonl, wandb and the progress bar
    mfu.py            training FLOPs per token and GPUs' peak throughput
    signals.py        SIGTERM / SIGINT: finish the step, save, exit 0
    faults.py         deterministic fault injection for the tests of resume

training imports model and data; neither imports training.
"""
