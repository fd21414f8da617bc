"""benchmarks.registers compiles the kernels for sm_90 on this CPU-only machine and tabulates ptxas's report."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, interpret="0"):
    env = {**os.environ, "TRITON_INTERPRET": interpret, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "benchmarks.registers", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_register_table_for_the_default_tiles(tmp_path):
    out = tmp_path / "registers.md"
    result = _run("--views", "1", "--defaults-only", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| one view")]
    paths = [r[1].strip() for r in rows]
    # forward, the dK/dV kernel with each dQ path, and the dQ kernel: one row each at their first tile
    assert paths == ["forward", "dK/dV, dQ by atomics", "dK/dV, dQ kernel apart", "dQ kernel",
                     "dK (dV apart), dQ by atomics", "dV apart"]
    assert [r[3].strip() for r in rows] == ["yes", "yes", "", "", "", ""]
    assert "query-major" in rows[1][2]   # the one-view default of kernels/threshold/tiles.py
    for r in rows:
        registers, spills, shared = int(r[4]), int(r[5]), float(r[6])
        assert 16 <= registers <= 255 and spills >= 0 and 0 < shared <= 227
    assert out.read_text() in result.stdout + "\n"


def test_refuses_the_interpreter():
    result = _run("--defaults-only", interpret="1")
    assert result.returncode != 0 and "without TRITON_INTERPRET=1" in result.stderr


def test_paired_layout_wider_than_the_kernels_take_is_skipped():
    """--head-dims 256 with two views would need v of 512, which the kernels refuse: no rows, no compile."""
    result = _run("--views", "2", "--head-dims", "256", "--defaults-only")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped: 2 view(s), d = 256 (paired v of 512 > 256)" in result.stderr
    assert "| TDA paired" not in result.stdout


def test_paired_heads_of_128_report_each_gluon_launch_at_its_own_tile(tmp_path):
    """At q/k 128 the Gluon forward takes keys_per_stage(128) keys per ring stage (not the d = 64 default's), and the
    backward is two launches with passes()' stages: the table's tile column says so."""
    from kernels.threshold.gluon_backward import passes
    from kernels.threshold.gluon_forward import keys_per_stage

    out = tmp_path / "registers.md"
    result = _run("--views", "2", "--head-dims", "128", "--defaults-only", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {r[1].strip(): r for r in (line.split("|")[1:-1] for line in out.read_text().splitlines()
                                      if line.startswith("| TDA paired"))}
    assert rows["forward (Gluon)"][2].strip().startswith(f"128×{keys_per_stage(128)}, ")
    (_, _, first), (_, _, second) = passes(128, 256)
    assert f"{first} stages" in rows["dK/dQ fused (Gluon)"][2] and f"{second} stages" in rows["dV apart (Gluon)"][2]
    assert all(rows[p][3].strip() == "yes" for p in ("forward (Gluon)", "dK/dQ fused (Gluon)", "dV apart (Gluon)"))
