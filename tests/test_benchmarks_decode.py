"""benchmarks.decode without a GPU: its arguments, what it counts as cache bytes read and value pages read, its
tables, and one tiny run of both stages on the CPU (wall-clock timing, the threshold kernel under the interpreter
for its page flags)."""
import pytest
import torch

from benchmarks import decode as bench


def test_defaults_and_refusals():
    args = bench.parse_args([])
    assert args.contexts == [1024, 2048, 4096, 8192, 16384, 32768] and args.batches == [1, 16]
    assert args.kernel_contexts[-1] == 131072 and args.attentions == ["softmax", "tda"]
    assert args.model == ["model=gpt2_162m"] and not args.no_graphs
    train = bench.parse_args(["--train-first", "+experiment=paper_small trainer.max_steps=10", "--contexts", "32768"])
    assert train.train_first == "+experiment=paper_small trainer.max_steps=10" and train.contexts == [32768]
    for bad in (["--from-run", "runs/a", "--train-first", "x=1"], ["--contexts", "40"], ["--steps", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_visible_keys_per_page():
    assert bench.visible_keys([0, 63, 64, 130], page=64) == [[1], [64], [64, 1], [64, 64, 3]]


def test_threshold_bytes_count_every_key_and_the_values_of_pages_read():
    """Two rows (queries at 130 and 10), two heads, pages of 64: keys of both views everywhere visible, values
    only on pages flagged 2 (a partial last page counts its visible keys)."""
    flags = torch.tensor([[[2, 1, 2], [1, 1, 1]], [[2, 0, 0], [1, 0, 0]]], dtype=torch.int8)
    read = bench.threshold_bytes([130, 10], flags, key_widths=[64, 64], value_width=128, element=2, page=64)
    keys = 2 * (131 + 11) * (64 + 64) * 2
    values = (64 + 3 + 11) * 128 * 2            # row 0 head 0: pages 0 and 2; row 1 head 0: page 0
    assert read.bytes == keys + values
    assert (read.value_pages_read, read.value_pages_visited) == (3, 8)
    assert bench.value_pages_share([flags]) == 3 / 8 and bench.value_pages_share([]) is None
    assert bench.dense_bytes([130, 10], [(12, 64), (12, 64)], 2) == (131 + 11) * 12 * 128 * 2


def test_end_to_end_table_gives_ratios_to_softmax_at_the_same_point():
    timing = dict(prompts="text", host_us_per_token=30.0)
    soft = bench.Point("m", "softmax", 1, 1024, ms_per_token=2.0, attention_us_per_layer=10.0,
                       cache_mb_per_token=100.0, **timing)
    tda = bench.Point("m", "tda", 1, 1024, weights="trained", ms_per_token=1.5, attention_us_per_layer=6.0,
                      cache_mb_per_token=51.0, value_pages_read=0.02, **timing)
    other = bench.Point("m", "tda", 16, 1024, error="out of memory")
    lines = bench.e2e_table([soft, tda, other]).splitlines()
    assert len(lines) == 5
    assert lines[3] == "| m | tda | trained | 1 | 1024 | text | 1.500 | 30 | 6.0 | 51.0 | 2.0% | 0.75 | 0.60 | 0.51 |"
    assert "out of memory" in lines[4]


def test_a_tiny_run_on_the_cpu(tmp_path):
    out = tmp_path / "decode.md"
    results = bench.main(["--device", "cpu", "--model", "model=tiny", "model.n_layer=1", "model.n_embd=32",
                          "model.n_head=2", "--vocab-size", "101", "--batches", "2", "--contexts", "40", "--steps",
                          "2", "--warmup", "1", "--reps", "1", "--dtype", "fp32", "--kernel-contexts", "70",
                          "--kernel-batches", "1", "--out", str(out), "--json", str(tmp_path / "decode.json")])
    softmax, tda = results["e2e"]
    assert (softmax["attention"], tda["attention"]) == ("softmax", "tda")
    for point in (softmax, tda):
        assert point["error"] is None and point["ms_per_token"] > 0 and point["attention_us_per_layer"] > 0
    # softmax reads every visible key and value (2 rows at position 39, 2 heads of 16, fp32, one layer)
    assert softmax["cache_mb_per_token"] == pytest.approx(2 * 40 * 2 * (16 + 16) * 4 / 1e6)
    # TDA (1 pair: keys 16 + 16, values 32) reads all its keys and no more than all its values
    assert 2 * 40 * 32 * 4 / 1e6 <= tda["cache_mb_per_token"] <= 2 * 40 * 64 * 4 / 1e6
    assert 0.0 <= tda["value_pages_read"] <= 1.0 and softmax["value_pages_read"] is None
    (row,) = results["kernel"]
    assert row["tda_us"] > 0 and row["softmax_us"] > 0 and 0.0 <= row["tda_value_pages_read"] <= 1.0
    text = out.read_text()
    assert "Decoding attention alone" in text and text.rstrip().endswith("|")


def test_a_trained_run_decodes_its_own_text_beside_softmax(train_run):
    """--from-run: the run's weights at a longer model.max_seq_len, prompts from its validation text, and softmax of
    the same configuration with random weights in the same table."""
    run = train_run("name=decode_bench_tda", "attention=tda", "trainer.max_steps=2")
    results = bench.main(["--device", "cpu", "--from-run", str(run), "--max-seq-len", "600", "--contexts", "560",
                          "--batches", "1", "--steps", "2", "--warmup", "1", "--reps", "1", "--stages", "e2e",
                          "--dtype", "fp32"])
    softmax, tda = results["e2e"]
    assert (softmax["attention"], softmax["weights"]) == ("softmax", "random")
    assert (tda["attention"], tda["weights"]) == ("tda", "trained")
    assert softmax["prompts"] == tda["prompts"] == "val text" and softmax["model"] == "decode_bench_tda"
    assert tda["error"] is None and tda["ms_per_token"] > 0


def test_the_kernel_sweep_times_every_split_plan(tmp_path):
    """--sweep times both decoding kernels at every (page, pages per split, pipeline depth) asked for, beside the
    launcher's own plan, and prints them as a table of its own (on the CPU under the interpreter, wall-clock)."""
    out = tmp_path / "decode.md"
    results = bench.main(["--device", "cpu", "--stages", "kernel", "--reps", "1", "--dtype", "fp32",
                          "--kernel-contexts", "70", "--kernel-batches", "1", "--sweep", "--sweep-splits", "1", "2",
                          "--sweep-pages", "32", "64", "--sweep-stages", "1", "3", "--out", str(out)])
    (row,) = results["kernel"]
    for kernel in ("tda", "softmax"):
        sweep = row[f"{kernel}_sweep"]
        assert sorted(sweep) == ["32x1x1", "32x1x3", "32x2x1", "32x2x3", "64x1x1", "64x1x3", "64x2x1", "64x2x3"]
        assert all(value is not None and value > 0 for value in sweep.values())
    text = out.read_text()
    table = text[text.index("## Split plans"):].splitlines()
    assert table[2] == "| kernel | batch | context | page | stages | launcher's plan µs | 1/split | 2/split |"
    lines = [line.split(" | ") for line in table[4:]]
    assert [(cells[0], cells[3], cells[4]) for cells in lines] == [
        (f"| {kernel}", page, depth) for kernel in ("tda", "softmax") for page in ("32", "64") for depth in ("1", "3")]
    for kernel in ("tda", "softmax"):  # exactly one fastest cell in bold per kernel
        assert sum(line.count("**") for line in table[4:] if line.startswith(f"| {kernel}")) == 2


def test_kernel_heads_and_launch_split(tmp_path):
    """--kernel-heads sets the kernels-alone layer (paired TDA: half as many heads), --kernel-split adds a table of
    each launch's device time (on the CPU no device kernels are recorded, and the table says so); an odd head
    count is refused."""
    out = tmp_path / "decode.md"
    results = bench.main(["--device", "cpu", "--stages", "kernel", "--reps", "1", "--dtype", "fp32",
                          "--kernel-contexts", "70", "--kernel-batches", "1", "--kernel-heads", "4",
                          "--kernel-split", "--out", str(out)])
    (row,) = results["kernel"]
    assert row["tda_launches"] == {} and row["softmax_launches"] == {}
    # bytes per call follow the heads: 2 paired heads of two 64-wide keys (no value page read at random inputs)
    mb = 1 * 2 * 70 * (2 * 64 + 128 * row["tda_value_pages_read"]) * 4 / 1e6
    assert row["tda_gb_per_s"] == pytest.approx(mb / 1e3 / (row["tda_us"] / 1e6))
    text = out.read_text()
    assert "## Each launch of our decoding kernels" in text and "(no device kernels recorded)" in text
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--stages", "kernel", "--kernel-heads", "5"])
