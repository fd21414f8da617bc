"""data.prepare on local files: round trip, splits, parallel workers, resume, hub code path, errors."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data import prepare as prep
from data.config import DataConfig
from data.loader import TokenLoader
from data.meta import read_meta
from data.shards import HEADER_BYTES, open_shard
from data.sources import is_validation
from data.tokenizer import get_tokenizer

WORDS = "the of and to in is was he that it for on with as his they at be this from have or".split()


def make_documents(n, seed=0):
    """`n` documents of random words and punctuation, with a few non-ASCII characters."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        words = rng.choice(WORDS + ["naïve", "café,", "déjà-vu."], size=int(rng.integers(5, 120)))
        docs.append(f"Document {i}. " + " ".join(words) + ("\n" if i % 3 else ""))
    return docs


def write_jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


def config(tmp_path, **overrides):
    values = dict(name="test", source="local", tokenizer="bytes", dir=str(tmp_path / "shards"),
                  paths=[str(tmp_path / "src" / "*")], shard_tokens=500, val_fraction=0.2, workers=1,
                  chunk_docs=4)
    values.update(overrides)
    return DataConfig.from_mapping(values)


def shard_bytes(shard_dir):
    return {p.name: p.read_bytes() for p in sorted(shard_dir.iterdir()) if p.name.endswith(".bin")}


def split_tokens(shard_dir, split):
    meta = read_meta(shard_dir)
    return np.concatenate([np.asarray(open_shard(shard_dir / s["file"]))
                           for s in meta["splits"][split]["shards"]])


def expected_tokens(docs, tokenizer, val_fraction):
    enc = get_tokenizer(tokenizer)
    out = {"train": [], "val": []}
    for i, doc in enumerate(docs):
        out["val" if is_validation(i, val_fraction) else "train"] += enc.encode_ordinary(doc) + [enc.eot_token]
    return out


@pytest.fixture
def jsonl_docs(tmp_path):
    docs = make_documents(60)
    (tmp_path / "src").mkdir()
    write_jsonl(tmp_path / "src" / "a.jsonl", docs[:25])
    write_jsonl(tmp_path / "src" / "b.jsonl", docs[25:])
    return docs


@pytest.mark.parametrize("tokenizer", ["bytes", "gpt2"])
def test_round_trip_equals_direct_tokenisation(tmp_path, jsonl_docs, tokenizer):
    shard_dir = prep.prepare_dataset(config(tmp_path, tokenizer=tokenizer), progress=False)
    meta = read_meta(shard_dir)
    want = expected_tokens(jsonl_docs, tokenizer, 0.2)
    for split in ("train", "val"):
        assert split_tokens(shard_dir, split).tolist() == want[split]
        assert meta["splits"][split]["tokens"] == len(want[split])
        counts = [s["tokens"] for s in meta["splits"][split]["shards"]]
        assert all(c == 500 for c in counts[:-1]) and 0 < counts[-1] <= 500
    assert meta["splits"]["val"]["documents"] == 12 and meta["splits"]["train"]["documents"] == 48
    assert (meta["tokenizer"], meta["eot_token"]) == (tokenizer, get_tokenizer(tokenizer).eot_token)
    assert not list(shard_dir.glob("*.partial")) and not (shard_dir / prep.PROGRESS_NAME).exists()


def test_txt_jsonl_and_parquet_sources_read_in_sorted_order(tmp_path):
    docs = make_documents(9)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text(docs[0])
    write_jsonl(src / "b.jsonl", docs[1:4], field="body")
    pq.write_table(pa.table({"body": docs[4:9]}), src / "c.parquet", row_group_size=2)
    cfg = config(tmp_path, text_field="body", val_fraction=0.0, paths=[str(src / "*.txt"), str(src / "*.*")])
    shard_dir = prep.prepare_dataset(cfg, progress=False)
    assert split_tokens(shard_dir, "train").tolist() == expected_tokens(docs, "bytes", 0.0)["train"]
    assert read_meta(shard_dir)["splits"]["val"] == {"tokens": 0, "documents": 0, "shards": []}


def test_worker_processes_write_the_same_shards(tmp_path, jsonl_docs):
    one = prep.prepare_dataset(config(tmp_path, dir=str(tmp_path / "one")), progress=False)
    two = prep.prepare_dataset(config(tmp_path, dir=str(tmp_path / "two"), workers=2), progress=False)
    assert shard_bytes(one) == shard_bytes(two) and len(shard_bytes(one)) > 4


class Crash(Exception):
    pass


def crash_after(monkeypatch, n_documents):
    """Make the next run's source fail after `n_documents` documents, as a dropped stream would."""
    real = prep.make_source

    def failing(cfg, cache_dir):
        source = real(cfg, cache_dir)
        documents = source.documents

        def docs(start=0, state=None):
            for i, text in enumerate(documents(start, state), start):
                if i == n_documents:
                    raise Crash(f"stream lost at document {i}")
                yield text

        source.documents = docs
        return source

    monkeypatch.setattr(prep, "make_source", failing)


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_run_resumes_to_identical_shards(tmp_path, jsonl_docs, monkeypatch, workers):
    clean = prep.prepare_dataset(config(tmp_path, dir=str(tmp_path / "clean")), progress=False)
    cfg = config(tmp_path, workers=workers)
    with monkeypatch.context() as patch:
        crash_after(patch, 37)
        with pytest.raises(Crash):
            prep.prepare_dataset(cfg, progress=False)
    work = prep.work_dir(cfg.shard_dir)
    finished = {p.name: p.stat() for p in work.glob("*.bin")}
    assert finished, "the interrupted run should have finished some shards"
    assert not cfg.shard_dir.exists() and not (work / "meta.json").exists()
    with pytest.raises(FileNotFoundError, match="no finished preparation"):
        TokenLoader(cfg.shard_dir, "train", 2, 8)
    prep.prepare_dataset(cfg, progress=False)
    assert shard_bytes(cfg.shard_dir) == shard_bytes(clean)
    for name, stat in finished.items():  # finished shards were left alone
        after = (cfg.shard_dir / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)


def test_resume_after_a_crash_between_checkpoint_and_rename(tmp_path, jsonl_docs, monkeypatch):
    clean = prep.prepare_dataset(config(tmp_path, dir=str(tmp_path / "clean")), progress=False)
    cfg = config(tmp_path)
    with monkeypatch.context() as patch:
        crash_after(patch, 45)
        with pytest.raises(Crash):
            prep.prepare_dataset(cfg, progress=False)
    work = prep.work_dir(cfg.shard_dir)
    last = sorted(work.glob("train_*.bin"))[-1]
    os.replace(last, str(last) + ".partial")  # as if the process died right before the rename
    with open(sorted(work.glob("*.partial"))[-1], "ab") as f:
        f.write(b"\x07" * 10)  # and wrote tokens after its last checkpoint
    prep.prepare_dataset(cfg, progress=False)
    assert shard_bytes(cfg.shard_dir) == shard_bytes(clean)


def test_hub_code_path_through_datasets_resumes_like_local_files(tmp_path, jsonl_docs, monkeypatch):
    local = prep.prepare_dataset(config(tmp_path, dir=str(tmp_path / "local")), progress=False)
    cfg = config(tmp_path, source="hub", hub_path="json", hub_split="train", paths=[],
                 hub_data_files=[str(tmp_path / "src" / "a.jsonl"), str(tmp_path / "src" / "b.jsonl")])
    with monkeypatch.context() as patch:
        crash_after(patch, 41)
        with pytest.raises(Crash):
            prep.prepare_dataset(cfg, progress=False)
    progress = json.loads((prep.work_dir(cfg.shard_dir) / prep.PROGRESS_NAME).read_text())
    assert progress["source_state"] is not None and progress["documents"] > 0
    prep.prepare_dataset(cfg, progress=False)
    assert shard_bytes(cfg.shard_dir) == shard_bytes(local)


def test_hub_missing_text_field_is_named(tmp_path, jsonl_docs):
    cfg = config(tmp_path, source="hub", hub_path="json", text_field="content", paths=[],
                 hub_data_files=[str(tmp_path / "src" / "a.jsonl")])
    with pytest.raises(ValueError, match=r"no text field 'content' \(found: \['id', 'text'\]\)"):
        prep.prepare_dataset(cfg, progress=False)


def test_missing_text_field_names_file_and_line(tmp_path):
    (tmp_path / "src").mkdir()
    path = tmp_path / "src" / "x.jsonl"
    path.write_text('{"text": "fine"}\n\n{"content": "no text field here"}\n')
    with pytest.raises(ValueError, match=rf"{path}:3: no text field 'text' \(found: \['content'\]\)"):
        prep.prepare_dataset(config(tmp_path), progress=False)
    assert not (tmp_path / "shards" / "meta.json").exists()
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "src" / "x.parquet")
    path.unlink()
    with pytest.raises(ValueError, match=r"x.parquet: no text column 'text'"):
        prep.prepare_dataset(config(tmp_path, dir=str(tmp_path / "pq")), progress=False)


def test_empty_sources_are_refused(tmp_path):
    with pytest.raises(ValueError, match="matches no file"):
        prep.prepare_dataset(config(tmp_path), progress=False)
    assert not (tmp_path / "shards").exists()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="holds no document"):
        prep.prepare_dataset(config(tmp_path), progress=False)
    (tmp_path / "src" / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="no text for the training split"):
        prep.prepare_dataset(config(tmp_path, dir=str(tmp_path / "b")), progress=False)
    assert not (tmp_path / "b" / "meta.json").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_source_too_small_for_val_fraction_gives_its_last_document_to_validation(tmp_path, workers):
    docs = make_documents(6)
    (tmp_path / "src").mkdir()
    write_jsonl(tmp_path / "src" / "a.jsonl", docs)
    assert not any(is_validation(i, 0.01) for i in range(len(docs)))  # the rule alone holds out nothing
    shard_dir = prep.prepare_dataset(config(tmp_path, val_fraction=0.01, shard_tokens=100_000, workers=workers),
                                     progress=False)
    enc = get_tokenizer("bytes")
    tokens = [enc.encode_ordinary(d) + [enc.eot_token] for d in docs]
    assert split_tokens(shard_dir, "val").tolist() == tokens[-1]
    assert split_tokens(shard_dir, "train").tolist() == sum(tokens[:-1], [])
    splits = read_meta(shard_dir)["splits"]
    assert (splits["train"]["documents"], splits["val"]["documents"]) == (5, 1)
    # val_fraction=0 still means no validation split
    shard_dir = prep.prepare_dataset(config(tmp_path, dir=str(tmp_path / "none"), val_fraction=0.0), progress=False)
    assert read_meta(shard_dir)["splits"]["val"]["documents"] == 0


def test_a_crash_after_the_last_document_moved_resumes_to_identical_shards(tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    write_jsonl(tmp_path / "src" / "a.jsonl", make_documents(6))
    clean = prep.prepare_dataset(config(tmp_path, dir=str(tmp_path / "clean"), val_fraction=0.01,
                                        shard_tokens=100_000), progress=False)
    cfg = config(tmp_path, val_fraction=0.01, shard_tokens=100_000)
    with monkeypatch.context() as patch:
        def crash(self):
            raise Crash("killed before the shards were sealed")

        patch.setattr(prep.ShardWriter, "finish", crash)
        with pytest.raises(Crash):
            prep.prepare_dataset(cfg, progress=False)
    record = json.loads((prep.work_dir(cfg.shard_dir) / prep.PROGRESS_NAME).read_text())
    assert record["splits"]["val"]["documents"] == 1  # the move was recorded before the crash
    prep.prepare_dataset(cfg, progress=False)
    assert shard_bytes(cfg.shard_dir) == shard_bytes(clean) and read_meta(cfg.shard_dir)["splits"] == read_meta(clean)["splits"]


def test_an_interrupted_folder_of_the_in_place_layout_is_resumed(tmp_path, jsonl_docs, monkeypatch):
    clean = prep.prepare_dataset(config(tmp_path, dir=str(tmp_path / "clean")), progress=False)
    cfg = config(tmp_path)
    with monkeypatch.context() as patch:
        crash_after(patch, 37)
        with pytest.raises(Crash):
            prep.prepare_dataset(cfg, progress=False)
    os.replace(prep.work_dir(cfg.shard_dir), cfg.shard_dir)  # where earlier versions wrote unfinished shards
    prep.prepare_dataset(cfg, progress=False)
    assert shard_bytes(cfg.shard_dir) == shard_bytes(clean) and not prep.work_dir(cfg.shard_dir).exists()
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "notes.txt").write_text("not shards")
    with pytest.raises(ValueError, match="holds no finished preparation"):
        prep.prepare_dataset(config(tmp_path, dir=str(tmp_path / "stray")), progress=False)
    assert (tmp_path / "stray" / "notes.txt").exists()


def test_a_single_document_cannot_be_split_and_the_error_says_what_to_do(tmp_path):
    (tmp_path / "src").mkdir()
    write_jsonl(tmp_path / "src" / "a.jsonl", make_documents(1))
    with pytest.raises(ValueError, match="holds 1 document.*pass val_fraction=0"):
        prep.prepare_dataset(config(tmp_path, val_fraction=0.1), progress=False)
    assert not (tmp_path / "shards").exists() and not prep.work_dir(tmp_path / "shards").exists()


def test_uint32_shards_when_asked_and_vocabulary_checks(tmp_path, jsonl_docs):
    shard_dir = prep.prepare_dataset(config(tmp_path, dtype="uint32"), progress=False)
    meta = read_meta(shard_dir)
    assert (meta["version"], meta["dtype"]) == (2, "uint32")
    assert split_tokens(shard_dir, "train").tolist() == expected_tokens(jsonl_docs, "bytes", 0.2)["train"]
    header = np.fromfile(shard_dir / meta["splits"]["train"]["shards"][0]["file"], dtype="<i4", count=3)
    assert header.tolist() == [20240520, 2, 500]
    assert (shard_dir / "train_000000.bin").stat().st_size == HEADER_BYTES + 500 * 4
    from data.shards import dtype_for_vocab
    assert dtype_for_vocab(65536).name == "uint16" and dtype_for_vocab(65537).name == "uint32"
    with pytest.raises(ValueError, match="vocabulary of 100277 tokens does not fit dtype=uint16"):
        dtype_for_vocab(100277, "uint16")


def test_a_folder_made_with_other_settings_is_refused(tmp_path, jsonl_docs):
    prep.prepare_dataset(config(tmp_path), progress=False)
    with pytest.raises(ValueError, match=r"prepared with shard_tokens=500 \(config: 1000\): pass data.shard_tokens=500"):
        prep.prepare_dataset(config(tmp_path, shard_tokens=1000), progress=False)
    with pytest.raises(ValueError, match="tokenizer='bytes'.*pass data.tokenizer=bytes to read it"):
        prep.ensure_prepared(config(tmp_path, tokenizer="gpt2"))


def test_readers_take_the_split_and_storage_settings_from_the_folder(tmp_path, jsonl_docs):
    shard_dir = prep.prepare_dataset(config(tmp_path), progress=False)  # val_fraction=0.2, shard_tokens=500
    assert prep.ensure_prepared(config(tmp_path, val_fraction=0.01, shard_tokens=1000, dtype="uint32")) == shard_dir
    other = str(tmp_path / "other" / "*.jsonl")
    with pytest.raises(ValueError) as err:
        prep.ensure_prepared(config(tmp_path, paths=[other], val_fraction=0.01))
    message = str(err.value)
    assert "pass 'data.paths=[" in message and "val_fraction" not in message


def test_ensure_prepared_names_the_command_for_missing_shards(tmp_path):
    cfg = prep.load_config("local", [f"paths=[{tmp_path}/*.jsonl]", f"dir={tmp_path}/out"])
    with pytest.raises(FileNotFoundError) as err:
        prep.ensure_prepared(cfg)
    assert f"run `python -m data.prepare local dir={tmp_path}/out paths=['{tmp_path}/*.jsonl']` first" \
        in str(err.value)


def test_cli(tmp_path, jsonl_docs, capsys):
    prep.main(["local", f"data.paths=[{tmp_path}/src/*.jsonl]", f"dir={tmp_path}/cli", "tokenizer=bytes",
               "shard_tokens=700", "workers=1", "val_fraction=0.2"])
    assert "train" in capsys.readouterr().out
    assert [s["tokens"] for s in read_meta(tmp_path / "cli")["splits"]["train"]["shards"]][0] == 700



@pytest.mark.parametrize("args,message", [
    (["local", "no_such_key=1"], "error: unknown data config keys ['no_such_key']"),
    (["local", "paths=[nowhere/*.txt]"], "error: data.paths: 'nowhere/*.txt' matches no file"),
    (["no_such_config"], "error: no data config 'no_such_config'"),
    (["local", "paths=[a"], "error: cannot read the override 'paths=[a'"),
])
def test_cli_errors_are_one_line_with_exit_code_2(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        prep.main(args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message)


def test_a_failed_preparation_leaves_nothing_behind(tmp_path, jsonl_docs):
    write_jsonl(tmp_path / "src" / "c.jsonl", ["fine"] * 3)
    with open(tmp_path / "src" / "c.jsonl", "a") as f:
        f.write('{"content": "no text field"}\n')
    cfg = config(tmp_path, shard_tokens=200)  # shards are finished before the bad line is read
    with pytest.raises(ValueError, match=r"c.jsonl:4: no text field"):
        prep.prepare_dataset(cfg, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_shards_appear_under_dir_only_once_complete(tmp_path, jsonl_docs, monkeypatch):
    cfg = config(tmp_path)
    seen = []
    real = prep._write_meta

    def write_meta(shard_dir, *args):
        seen.append((shard_dir, cfg.shard_dir.exists(), sorted(p.name for p in shard_dir.glob("*.bin"))))
        real(shard_dir, *args)

    monkeypatch.setattr(prep, "_write_meta", write_meta)
    assert prep.prepare_dataset(cfg, progress=False) == cfg.shard_dir
    [(written_in, final_existed, shards)] = seen
    assert written_in == prep.work_dir(cfg.shard_dir) and not final_existed and shards
    assert sorted(p.name for p in cfg.shard_dir.iterdir()) == sorted(shards + ["meta.json"])
    assert not prep.work_dir(cfg.shard_dir).exists()
