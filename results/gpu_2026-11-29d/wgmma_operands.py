"""Which wgmma operand forms give the right product on this Triton (a check of the fused backward's building
blocks): K (128 x 64), Q (32 x 64), dO (32 x 128) read by the copy engine through 4-D descriptors as the kernel
reads them, then
  S  = K . Q^T                      (both operands K-major, from shared memory)
  C1 = bf16(S) . Q                  (A from registers, B = Q with its rows along K: MN-major)
  C2 = bf16(S) . Q                  (A stored to shared memory, B as C1)
  C3 = K^T . bf16(S)                (A = K^T, B = bf16(S) from shared memory, both MN-major)
  C4 = bf16(S) . dO                 (A from registers, B = dO MN-major, N = 128)
  C5 = bf16(S) . Q with Q^T stored K-major by the kernel (Q loaded to registers and stored transposed)
each compared with torch in fp32.    PYTHONPATH=. python results/gpu_2026-11-29d/wgmma_operands.py
"""
import sys

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor


@gluon.jit
def _two_d(smem, ROWS: gl.constexpr, WIDTH: gl.constexpr):
    return smem._reinterpret(smem.dtype, [ROWS, WIDTH], gl.NVMMASharedLayout.get_default_for([ROWS, WIDTH], smem.dtype))


@gluon.jit
def operands_kernel(k_desc, q_desc, do_desc, S, C1, C2, C3, C4, C5):
    BN: gl.constexpr = 128
    BM: gl.constexpr = 32
    D: gl.constexpr = 64
    DV: gl.constexpr = 128
    S_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1], instr_shape=[16, BM, 16])
    DK_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1], instr_shape=[16, D, 16])
    DV_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1], instr_shape=[16, DV, 16])
    DQ_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2], instr_shape=[16, 16, 16])
    k4 = gl.allocate_shared_memory(gl.bfloat16, k_desc.block_type.shape, k_desc.layout)
    q4 = gl.allocate_shared_memory(gl.bfloat16, q_desc.block_type.shape, q_desc.layout)
    do4 = gl.allocate_shared_memory(gl.bfloat16, do_desc.block_type.shape, do_desc.layout)
    bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(bar, count=1)
    mbarrier.expect(bar, k_desc.block_type.nbytes + q_desc.block_type.nbytes + do_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(k_desc, [0, 0, 0, 0], bar, k4)
    tma.async_copy_global_to_shared(q_desc, [0, 0, 0, 0], bar, q4)
    tma.async_copy_global_to_shared(do_desc, [0, 0, 0, 0], bar, do4)
    mbarrier.wait(bar, phase=0)
    k_s = _two_d(k4, BN, D)
    q_s = _two_d(q4, BM, D)
    do_s = _two_d(do4, BM, DV)
    s = warpgroup_mma(k_s, q_s.permute((1, 0)), gl.zeros([BN, BM], gl.float32, layout=S_L), use_acc=False)
    rows = gl.arange(0, BN, layout=gl.SliceLayout(1, S_L))
    cols = gl.arange(0, BM, layout=gl.SliceLayout(0, S_L))
    gl.store(S + rows[:, None] * BM + cols[None, :], s)
    p = s.to(gl.bfloat16)
    c1 = warpgroup_mma(gl.convert_layout(p, gl.DotOperandLayout(0, DK_L, 2)), q_s,
                       gl.zeros([BN, D], gl.float32, layout=DK_L), use_acc=False)
    r = gl.arange(0, BN, layout=gl.SliceLayout(1, DK_L))
    c = gl.arange(0, D, layout=gl.SliceLayout(0, DK_L))
    gl.store(C1 + r[:, None] * D + c[None, :], c1)
    p_s = gl.allocate_shared_memory(gl.bfloat16, [BN, BM], gl.NVMMASharedLayout.get_default_for([BN, BM], gl.bfloat16))
    p_s.store(p)
    fence_async_shared()
    gl.thread_barrier()
    c2 = warpgroup_mma(p_s, q_s, gl.zeros([BN, D], gl.float32, layout=DK_L), use_acc=False)
    gl.store(C2 + r[:, None] * D + c[None, :], c2)
    c3 = warpgroup_mma(k_s.permute((1, 0)), p_s, gl.zeros([D, BM], gl.float32, layout=DQ_L), use_acc=False)
    r3 = gl.arange(0, D, layout=gl.SliceLayout(1, DQ_L))
    c3i = gl.arange(0, BM, layout=gl.SliceLayout(0, DQ_L))
    gl.store(C3 + r3[:, None] * BM + c3i[None, :], c3)
    c4 = warpgroup_mma(gl.convert_layout(p, gl.DotOperandLayout(0, DV_L, 2)), do_s,
                       gl.zeros([BN, DV], gl.float32, layout=DV_L), use_acc=False)
    r4 = gl.arange(0, BN, layout=gl.SliceLayout(1, DV_L))
    c4i = gl.arange(0, DV, layout=gl.SliceLayout(0, DV_L))
    gl.store(C4 + r4[:, None] * DV + c4i[None, :], c4)
    # Q^T stored K-major by the kernel itself: registers -> shared memory [D, BM], used as B permuted
    blocked: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [8, 1], [1, 0])
    qt_s = gl.allocate_shared_memory(gl.bfloat16, [D, BM], gl.NVMMASharedLayout.get_default_for([D, BM], gl.bfloat16))
    qt_s.store(gl.permute(q_s.load(blocked), (1, 0)))
    fence_async_shared()
    gl.thread_barrier()
    c5 = warpgroup_mma(gl.convert_layout(p, gl.DotOperandLayout(0, DK_L, 2)), qt_s.permute((1, 0)),
                       gl.zeros([BN, D], gl.float32, layout=DK_L), use_acc=False)
    gl.store(C5 + r[:, None] * D + c[None, :], c5)
    mbarrier.invalidate(bar)


def descriptor(t, rows):
    block = [1, 1, rows, t.shape[-1]]
    return TensorDescriptor(t, list(t.shape), list(t.stride()), block,
                            gl.NVMMASharedLayout.get_default_for(block, gl.bfloat16))


def main():
    torch.manual_seed(0)
    k = torch.randn(1, 1, 128, 64, device="cuda", dtype=torch.bfloat16)
    q = torch.randn(1, 1, 32, 64, device="cuda", dtype=torch.bfloat16)
    do = torch.randn(1, 1, 32, 128, device="cuda", dtype=torch.bfloat16)
    f = lambda *s: torch.empty(*s, device="cuda")
    S, C1, C2, C3, C4, C5 = f(128, 32), f(128, 64), f(128, 64), f(64, 32), f(128, 128), f(128, 64)
    operands_kernel[(1,)](descriptor(k, 128), descriptor(q, 32), descriptor(do, 32), S, C1, C2, C3, C4, C5,
                          num_warps=8)
    torch.cuda.synchronize()
    K, Q, DO = k[0, 0].float(), q[0, 0].float(), do[0, 0].float()
    s_ref = K @ Q.T
    P = S.to(torch.bfloat16).float()
    checks = {"S = K.Q^T": (S, s_ref), "C1 RS, B MN-major": (C1, P @ Q), "C2 SS, B MN-major": (C2, P @ Q),
              "C3 A=K^T, B=P (both MN-major)": (C3, K.T @ P), "C4 RS, B=dO MN-major": (C4, P @ DO),
              "C5 RS, B K-major (Q^T stored)": (C5, P @ Q)}
    bad = 0
    for name, (got, want) in checks.items():
        err = ((got - want).abs().max() / want.abs().max()).item()
        bad += err > 1e-2
        print(f"{name:32s} max rel err {err:.2e}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
