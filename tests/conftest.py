"""Test-wide settings: Triton's interpreter (set before any kernel module is imported), offline hubs."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "slow: slower than a few seconds")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fast_launch_on_gpu(monkeypatch):
    """kernels.fast_launch as it behaves on a GPU (compiled kernels kept, a device, a stream 1234), for stand-in
    kernels on a CPU; nothing kept before or after."""
    from kernels import fast_launch

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(fast_launch.torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(fast_launch.torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(fast_launch, "_raw_stream", lambda device: 1234)
    fast_launch._kept.clear()
    yield
    fast_launch._kept.clear()


# ---- a tiny prepared corpus and trained runs, shared by the training, eval and analysis tests ----

WORDS = ("the king and queen of a small land walked to the sea where ships of gold and silver came "
         "with the morning light while birds sang over green hills and old towers stood in the rain").split()
TINY_MODEL = ["model=tiny", "model.n_layer=2", "model.n_embd=32", "model.n_head=4", "model.seq_len=64",
              "model.max_seq_len=512"]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A prepared byte-level corpus of 60 small documents of English words; returns its data overrides."""
    from data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("corpus")
    rng = torch.Generator().manual_seed(0)
    for i in range(60):
        words = [WORDS[j] for j in torch.randint(len(WORDS), (400,), generator=rng)]
        (root / f"doc{i:02d}.txt").write_text(" ".join(words) + ".\n")
    overrides = {"name": "tiny", "source": "local", "tokenizer": "bytes", "dir": str(root / "shards"),
                 "paths": [str(root / "*.txt")], "val_fraction": 0.1, "workers": 1, "bos_aligned": False}
    prepare_dataset(overrides, progress=False)
    return ["data=local"] + [f"data.{k}={v}" if not isinstance(v, list) else f"data.{k}=[{','.join(v)}]"
                             for k, v in overrides.items()]


def compose_train(overrides):
    from hydra import compose, initialize_config_dir

    conf = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.fixture(scope="session")
def train_base(tiny_corpus, tmp_path_factory):
    """The overrides train_run puts before a test's own: the tiny corpus and model, a batch of 8, one thread,
    no progress bar, and one runs_root for the session (a subprocess given them trains the same run)."""
    runs_root = tmp_path_factory.mktemp("runs")
    return [*tiny_corpus, *TINY_MODEL, f"runs_root={runs_root}", "logger.progress=false",
            "trainer.batch_size=8", "trainer.eval_batches=2", "trainer.threads=1"]


@pytest.fixture(scope="session")
def train_run(train_base):
    """train_run(*overrides) trains a tiny model in-process on the tiny corpus and returns its run dir."""
    from training.loop import train

    def run(*overrides):
        return train(compose_train(train_base + list(overrides)))

    return run
