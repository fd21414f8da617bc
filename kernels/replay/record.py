"""Recording a call into a program the native engine (native.cpp) replays.

``Recorder`` is a torch dispatch mode: while it is active every ATen operation of the call is run as usual and
written down as an instruction over numbered slots (the call's inputs first, then each new tensor), and every kernel
that kernels.fast_launch launches from its kept, already compiled kernels is written down with its grid, its
compiled kernel's handle and each of its parameters (kernels.fast_launch calls ``note_launch``). A call whose
operations or launches fall outside what the engine can replay is "refused": it still runs, and ``refused`` says why.

What a program fixes: every size, stride and dtype, the offsets of views within their base, every scalar argument
and every tensor map's shape, strides and box. What it leaves to each call: the tensors' addresses. A program is
therefore valid for calls whose inputs have the recorded metadata (the key of kernels.replay.paired), and for the module
switches and Triton kernels as they were when it was recorded.

Kernel parameters follow the compiled kernel's signature, expanded as Triton's own launcher for CUDA expands it
(Triton 3.6 and 3.7): constexprs take no parameter, a host tensor descriptor lowered to a TMA map takes the map
(128 bytes) then its shape (i32 each) and strides (i64 each), and two null scratch pointers end the list.
"""

from __future__ import annotations

import struct
from typing import Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .. import fast_launch

OPCODES = dict(ALLOC=0, VIEW=1, ZERO=2, SUM=3, COPY=4, LAUNCH=5, ZERO_BYTES=6)
POOL_ALIGN = 256  # bytes: where each temporary starts in the pooled allocation (TMA and the kernels' pointers ask 16)
PARAMS = dict(PTR=0, NULL=1, I8=2, I16=3, I32=4, I64=5, B16=6, B32=7, B64=8, TMAP=9)
_INTS = {"i1": "I8", "i8": "I8", "u1": "I8", "u8": "I8", "i16": "I16", "u16": "I16", "i32": "I32", "u32": "I32",
         "i64": "I64", "u64": "I64"}
# the TMA element types of Triton's device-side enum, as the driver's host-side enum numbers them (Triton's launcher
# makes the same mapping)
_TMA_HOST_TYPE = {**{i: i for i in range(16)}, 8: 10, 9: 8, 10: 9}
_FACTORIES = {"aten::empty.memory_format", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided",
              "aten::empty_like"}
_ZERO_FACTORIES = {"aten::zeros", "aten::new_zeros", "aten::zeros_like"}


class Refused(Exception):
    """What a recording cannot replay."""


# c10::ScalarType's order, as far as the kernels' tensors go
_SCALAR_TYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.float32,
                 torch.float64, torch.complex32, torch.complex64, torch.complex128, torch.bool, torch.qint8,
                 torch.quint8, torch.qint32, torch.bfloat16]


def _dtype_code(dtype: torch.dtype) -> int:
    """ATen's ScalarType number of ``dtype`` (c10::ScalarType, as the engine casts it back)."""
    return _SCALAR_TYPES.index(dtype)


class Recorder(TorchDispatchMode):
    """Records the operations and launches of the code run under it (``with Recorder(inputs) as r: ...``), then
    ``r.program(outputs)`` gives what native.register_program takes, or raises Refused."""

    def __init__(self, inputs: Sequence[torch.Tensor]):
        super().__init__()
        self.inputs = list(inputs)
        self.keep: list[torch.Tensor] = []  # every slot's tensor, kept alive so that ids stay unique
        self.slots: dict[int, int] = {}
        self.code: list[list[int]] = []
        self.functions: list[int] = []
        self.shapes: list[list[int]] = []
        self.params: list[list[list[int]]] = []
        self.views: dict[int, tuple[int, int, bool]] = {}  # view slot -> (root slot, byte offset, same layout)
        self.refused: Optional[str] = None
        for t in self.inputs:
            self._new_slot(t)

    # -- slots
    def _new_slot(self, t: torch.Tensor) -> int:
        self.slots[id(t)] = len(self.keep)
        self.keep.append(t)
        return self.slots[id(t)]

    def slot(self, t: torch.Tensor) -> int:
        s = self.slots.get(id(t))
        if s is None:
            raise Refused(f"a tensor {tuple(t.shape)} {t.dtype} made outside the recording reached it")
        return s

    def _root(self, s: int) -> tuple[int, int]:
        """The slot whose tensor ``s`` views (``s`` itself where it is no view) and ``s``'s byte offset in it."""
        root, offset, _ = self.views.get(s, (s, 0, False))
        return root, offset

    def refuse(self, why: str) -> None:
        if self.refused is None:
            self.refused = why

    # -- the mode
    def __enter__(self):
        fast_launch.recording = self
        return super().__enter__()

    def __exit__(self, *exc):
        fast_launch.recording = None
        return super().__exit__(*exc)

    def _noting(self, note, *args) -> None:
        """``note(*args)`` until the first refusal, which is kept."""
        if self.refused is None:
            try:
                note(*args)
            except Refused as why:
                self.refuse(str(why))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self._noting(self._note, func, args, kwargs, out)
        return out

    def _note(self, func, args, kwargs, out) -> None:
        name = func.name()
        if func.is_view:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            root, _ = self._root(self.slot(args[0]))
            r = self.keep[root]
            for o in outs:
                s = self._new_slot(o)
                same = o.dtype == r.dtype and o.shape == r.shape and o.stride() == r.stride() and \
                    o.data_ptr() == r.data_ptr()
                self.views[s] = (root, o.data_ptr() - r.data_ptr(), same)
                self.code.append([OPCODES["VIEW"], s, root, o.dim(), *o.shape, *o.stride()])
            return
        if name in _FACTORIES or name in _ZERO_FACTORIES:
            self.code.append([OPCODES["ALLOC"], self._new_slot(out), _dtype_code(out.dtype),
                              int(name in _ZERO_FACTORIES), out.dim(), *out.shape, *out.stride()])
            return
        if name == "aten::zero_" or (name == "aten::fill_.Scalar" and args[1] == 0):
            self.code.append([OPCODES["ZERO"], self.slot(args[0])])
            return
        if name == "aten::sum.dim_IntList":
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
            if keepdim or kwargs.get("dtype") is not None or dims is None:
                raise Refused("a sum with keepdim or a dtype")
            dims = [int(d) for d in dims]
            self.code.append([OPCODES["SUM"], self._new_slot(out), self.slot(args[0]), len(dims), *dims])
            return
        if name == "aten::clone":
            self.code.append([OPCODES["COPY"], self._new_slot(out), self.slot(args[0]), out.dim(), *out.shape,
                              *out.stride()])
            return
        raise Refused(f"the operation {name}")

    # -- launches (from kernels.fast_launch)
    def note_launch(self, compiled, grid: tuple, values: Sequence) -> None:
        self._noting(self._note_launch, compiled, grid, values)

    def _note_launch(self, compiled, grid: tuple, values: Sequence) -> None:
        md = compiled.metadata
        for what, bad in (("clusters", getattr(md, "num_ctas", 1) != 1), ("PDL", getattr(md, "launch_pdl", False)),
                          ("a cooperative grid", getattr(md, "launch_cooperative_grid", False)),
                          ("global scratch", getattr(md, "global_scratch_size", 0) > 0),
                          ("profile scratch", getattr(md, "profile_scratch_size", 0) > 0)):
            if bad:
                raise Refused(f"{compiled.name} needs {what}")
        signature = list(compiled.src.signature.values())
        if len(signature) != len(values):
            raise Refused(f"{compiled.name}: {len(values)} arguments for {len(signature)} parameters")
        metas = list(getattr(md, "tensordesc_meta", None) or [])
        params: list[list[int]] = []
        for ty, value in zip(signature, values):
            if ty == "constexpr":
                continue
            if not isinstance(ty, str):
                raise Refused(f"{compiled.name}: a tuple parameter")
            if ty.startswith("tensordesc"):
                if not metas:
                    raise Refused(f"{compiled.name}: a tensor descriptor not lowered to a TMA map")
                params.append(self._tensor_map(value, metas.pop(0)))
                params += [[PARAMS["I32"], int(s)] for s in value.shape]
                params += [[PARAMS["I64"], int(s)] for s in value.strides]
            elif ty.startswith("*"):
                if value is None:
                    params.append([PARAMS["NULL"]])
                elif isinstance(value, torch.Tensor):
                    params.append([PARAMS["PTR"], self.slot(value), 0])
                else:
                    raise Refused(f"{compiled.name}: a pointer given as {type(value).__name__}")
            elif ty in _INTS:
                params.append([PARAMS[_INTS[ty]], int(value)])
            elif ty in ("fp32", "f32"):
                params.append([PARAMS["B32"], struct.unpack("<I", struct.pack("<f", float(value)))[0]])
            elif ty == "fp16":
                params.append([PARAMS["B16"], struct.unpack("<H", struct.pack("<e", float(value)))[0]])
            elif ty == "fp64":
                params.append([PARAMS["B64"], struct.unpack("<q", struct.pack("<d", float(value)))[0]])
            else:
                raise Refused(f"{compiled.name}: a parameter of type {ty}")
        params += [[PARAMS["NULL"]], [PARAMS["NULL"]]]  # global and profile scratch
        grid = tuple(grid) + (1,) * (3 - len(grid))
        self.code.append([OPCODES["LAUNCH"], len(self.functions)])
        self.functions.append(int(compiled.function))
        self.shapes.append([int(grid[0]), int(grid[1]), int(grid[2]), 32 * int(md.num_warps), int(md.shared)])
        self.params.append(params)

    def _tensor_map(self, desc, meta) -> list[int]:
        if meta.get("fp4_padded") or meta.get("is_im2col"):
            raise Refused("an fp4-padded or im2col tensor map")
        rank = len(meta["block_size"])
        shape, strides, elem = list(desc.shape), list(desc.strides), int(meta["elem_size"])
        if len(shape) != rank or strides[-1] != 1:
            raise Refused("a tensor map whose rank or last stride the launcher would reject")
        fill = 1 if getattr(desc, "padding", "zero") == "nan" else 0
        return [PARAMS["TMAP"], self.slot(desc.base), 0, int(desc.base.data_ptr()),
                _TMA_HOST_TYPE[int(meta["elem_type"])], rank, int(meta["swizzle"]), fill,
                *reversed([int(s) for s in shape]), *reversed([elem * int(s) for s in strides[:-1]]),
                *reversed([int(b) for b in meta["block_size"]])]

    # -- the result
    def program(self, outputs: Sequence[Optional[torch.Tensor]]) -> tuple:
        """(n_inputs, n_slots, code, functions, shapes, params, output slots): native.register_program's arguments.

        Only what the outputs and the launches need is kept (``_needed``): a view whose one use is a kernel's address
        becomes its root's address plus a byte offset, a view of its root's own layout becomes the root, and an
        allocation, view, reduction or copy nothing reads is left out. Then the temporaries only kernels address
        share one allocation (``_pooled``)."""
        if self.refused is not None:
            raise Refused(self.refused)
        out = [self.slot(t) if t is not None else -1 for t in outputs]
        code, params, out = self._needed(out)
        code, params, n_slots = self._pooled(code, params, out)
        return (len(self.inputs), n_slots, code, self.functions, self.shapes, params, out)

    def _needed(self, out: list[int]) -> tuple:
        """The program without the instructions nothing needs (one pass from the end: a launch is always kept, and
        marks its pointers' roots; a fill is kept where its root is needed after it; anything else where what it
        makes is), its launches' pointers given as (root, byte offset), and views of a root's own layout replaced by
        the root."""
        def alias(s: int) -> int:
            root, _, same = self.views.get(s, (s, 0, False))
            return root if same else s

        def addressed(p: list[int]) -> list[int]:
            if p[0] not in (PARAMS["PTR"], PARAMS["TMAP"]):
                return p
            return [p[0], *self._root(p[1]), *p[3:]]

        params = [[addressed(p) for p in ps] for ps in self.params]
        need: set[int] = set()

        def use(s: int) -> None:  # s must exist as a tensor: a view kept needs its root too
            s = alias(s)
            need.add(s)
            if s in self.views:
                need.add(self.views[s][0])

        out = [alias(s) if s >= 0 else -1 for s in out]
        for s in out:
            if s >= 0:
                use(s)
        kept = []
        for ins in reversed(self.code):
            op = ins[0]
            if op == OPCODES["LAUNCH"]:
                for p in params[ins[1]]:
                    if p[0] in (PARAMS["PTR"], PARAMS["TMAP"]):
                        need.add(p[1])
            elif op == OPCODES["ZERO"]:
                s = ins[1]
                if self._root(s)[0] not in need:
                    continue
                ins = [op, alias(s)]
                use(ins[1])
            elif ins[1] not in need:
                continue  # (an identity view is never needed itself: its uses name the root)
            elif op == OPCODES["VIEW"]:
                root, offset, _ = self.views[ins[1]]
                o, r = self.keep[ins[1]], self.keep[root]
                if o.dtype != r.dtype or offset % r.element_size():
                    raise Refused(f"a view as {o.dtype} of a {r.dtype} tensor")
                ins = [op, ins[1], root, offset // r.element_size(), *ins[3:]]
            elif op in (OPCODES["SUM"], OPCODES["COPY"]):
                ins = [op, ins[1], alias(ins[2]), *ins[3:]]
                use(ins[2])
            kept.append(ins)
        return kept[::-1], params, out

    def _pooled(self, code: list, params: list, out: list[int]) -> tuple[list, list, int]:
        """Temporaries (allocations that are no output and that only launches address, and fills) placed in one
        allocation: one allocation and one free per call instead of one each. Each starts at a multiple of
        POOL_ALIGN bytes; a zero-filled one becomes a ZERO_BYTES of its range. Returns the code, the launches'
        parameters and the number of slots (the pool's is the last)."""
        read = {ins[2] for ins in code if ins[0] in (OPCODES["VIEW"], OPCODES["SUM"], OPCODES["COPY"])}
        spans: dict[int, tuple[int, int]] = {}  # pooled slot -> (its byte offset in the pool, its bytes)
        size = 0
        for ins in code:
            if ins[0] == OPCODES["ALLOC"] and ins[1] not in out and ins[1] not in read:
                size = -(-size // POOL_ALIGN) * POOL_ALIGN
                spans[ins[1]] = (size, _storage_bytes(self.keep[ins[1]]))
                size += spans[ins[1]][1]
        n_slots = len(self.keep)
        if len(spans) < 2:
            return code, params, n_slots
        pool = n_slots
        pooled_code, placed = [], False
        for ins in code:
            op = ins[0]
            if op == OPCODES["ALLOC"] and ins[1] in spans:
                if not placed:
                    pooled_code.append([OPCODES["ALLOC"], pool, _dtype_code(torch.uint8), 0, 1, size, 1])
                    placed = True
                if ins[3]:
                    pooled_code.append([OPCODES["ZERO_BYTES"], pool, *spans[ins[1]]])
            elif op == OPCODES["ZERO"] and ins[1] in spans:
                pooled_code.append([OPCODES["ZERO_BYTES"], pool, *spans[ins[1]]])
            else:
                pooled_code.append(ins)

        def moved(p: list[int]) -> list[int]:
            if p[0] in (PARAMS["PTR"], PARAMS["TMAP"]) and p[1] in spans:
                return [p[0], pool, p[2] + spans[p[1]][0], *p[3:]]
            return p
        return pooled_code, [[moved(p) for p in ps] for ps in params], n_slots + 1


def _storage_bytes(t: torch.Tensor) -> int:
    """Bytes from a tensor's first element to the end of its last (its allocation's size, made by empty_strided)."""
    if t.numel() == 0:
        return 0
    return (1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))) * t.element_size()
