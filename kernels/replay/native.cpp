// The replay engine of kernels/replay: runs a recorded program (allocations, views, fills, reductions, kernel
// launches) with no Python in the call, and an autograd node over a recorded forward and backward.
//
// A program is a list of instructions over numbered slots of tensors: slots 0 .. n_inputs - 1 are the call's
// inputs, the others are made by the instructions in order. Everything shape-dependent (sizes, strides, grids,
// scalar kernel arguments, tensor-map dimensions) was fixed when the program was recorded (record.py), so a program
// serves only calls whose inputs have the recorded sizes, strides, dtypes and alignment: the Python side keys
// programs by exactly that. What changes from call to call is where tensors live: pointers and the address in each
// tensor map (cuTensorMapReplaceAddress on a map encoded once at registration).
#include <torch/extension.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/edge.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <dlfcn.h>
#include <chrono>
#include <cstring>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda.h"

namespace {

// instruction opcodes (record.py's OPCODES)
enum : int64_t { ALLOC = 0, VIEW = 1, ZERO = 2, SUM = 3, COPY = 4, LAUNCH = 5, ZERO_BYTES = 6 };
// kernel parameter kinds (record.py's PARAMS); each is [kind, ...]
enum : int64_t { P_PTR = 0, P_NULL = 1, P_I8 = 2, P_I16 = 3, P_I32 = 4, P_I64 = 5, P_B16 = 6, P_B32 = 7, P_B64 = 8,
                 P_TMAP = 9 };

using LaunchKernel = CUresult (*)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                  CUstream, void**, void**);
using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
using ReplaceAddress = CUresult (*)(CUtensorMap*, void*);
using ErrorString = CUresult (*)(CUresult, const char**);
using Memset8 = CUresult (*)(CUdeviceptr, unsigned char, size_t, CUstream);
using Memset32 = CUresult (*)(CUdeviceptr, unsigned int, size_t, CUstream);

struct Driver {
  LaunchKernel launch = nullptr;
  EncodeTiled encode = nullptr;
  ReplaceAddress replace = nullptr;
  ErrorString error = nullptr;
  Memset8 memset8 = nullptr;
  Memset32 memset32 = nullptr;
};

const Driver& driver() {
  static Driver d;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (lib == nullptr) lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (lib == nullptr) return;
    d.launch = reinterpret_cast<LaunchKernel>(dlsym(lib, "cuLaunchKernel"));
    d.encode = reinterpret_cast<EncodeTiled>(dlsym(lib, "cuTensorMapEncodeTiled"));
    d.replace = reinterpret_cast<ReplaceAddress>(dlsym(lib, "cuTensorMapReplaceAddress"));
    d.error = reinterpret_cast<ErrorString>(dlsym(lib, "cuGetErrorString"));
    d.memset8 = reinterpret_cast<Memset8>(dlsym(lib, "cuMemsetD8Async"));
    d.memset32 = reinterpret_cast<Memset32>(dlsym(lib, "cuMemsetD32Async"));
  });
  if (d.launch == nullptr || d.encode == nullptr || d.replace == nullptr || d.error == nullptr ||
      d.memset8 == nullptr || d.memset32 == nullptr)
    throw std::runtime_error("kernels.replay: libcuda.so.1 or one of its launch functions could not be loaded");
  return d;
}

void check(CUresult result, const char* what) {
  if (result == CUDA_SUCCESS) return;
  const char* text = nullptr;
  driver().error(result, &text);
  throw std::runtime_error(std::string("kernels.replay: ") + what + " failed: " + (text ? text : "unknown error"));
}

struct Param {
  int64_t kind;
  int64_t value;   // the slot (P_PTR, P_TMAP) or the value's bits
  int64_t offset;  // P_PTR, P_TMAP: bytes past the slot's address (a view the program does not make)
  int64_t map;     // P_TMAP: index into Launch::maps
};

struct Launch {
  CUfunction function;
  unsigned grid[3];
  unsigned block;
  unsigned shared;
  std::vector<Param> params;
  std::vector<CUtensorMap> maps;  // encoded at registration; each call copies them and replaces the address
};

struct Program {
  int64_t n_inputs = 0;
  int64_t n_slots = 0;
  std::vector<std::vector<int64_t>> code;
  std::vector<Launch> launches;
  std::vector<int64_t> outputs;  // slots returned, -1 for an undefined tensor
  // The layout input 0 was recorded in (a backward's incoming gradient, which arrives in whatever layout the next op
  // gives): an input in another layout, or less aligned, is copied into it. None where expect_align is 0.
  std::vector<int64_t> expect_sizes, expect_strides;
  int64_t expect_align = 0;
};

// A deque: registering a program (on any thread) leaves the programs already there, which runs may be reading, where
// they are.
std::deque<Program>& programs() {
  static std::deque<Program> all;
  return all;
}

std::mutex& registry_lock() {
  static std::mutex m;
  return m;
}

const Program& program(int64_t id) {
  std::lock_guard<std::mutex> guard(registry_lock());
  if (id < 0 || id >= static_cast<int64_t>(programs().size()))
    throw std::out_of_range("kernels.replay: no program " + std::to_string(id));
  return programs()[id];
}

std::vector<int64_t> take(const std::vector<int64_t>& a, size_t at, size_t n) {
  return std::vector<int64_t>(a.begin() + at, a.begin() + at + n);
}

Launch make_launch(int64_t function, const std::vector<int64_t>& shape, const std::vector<std::vector<int64_t>>& params) {
  Launch l;
  l.function = reinterpret_cast<CUfunction>(static_cast<uintptr_t>(function));
  for (int i = 0; i < 3; ++i) l.grid[i] = static_cast<unsigned>(shape.at(i));
  l.block = static_cast<unsigned>(shape.at(3));
  l.shared = static_cast<unsigned>(shape.at(4));
  for (const auto& p : params) {
    // [P_PTR, slot, byte offset]; [P_TMAP, slot, byte offset, ...]; [kind, value] for the others
    Param q{p.at(0), p.size() > 1 ? p[1] : 0, 0, -1};
    if (q.kind == P_PTR || q.kind == P_TMAP) q.offset = p.at(2);
    if (q.kind == P_TMAP) {
      // [P_TMAP, slot, byte offset, address at recording, elem type, rank, swizzle, fill, dims (rank), byte strides
      //  (rank - 1), box (rank)], every list innermost first, as cuTensorMapEncodeTiled takes them
      const int64_t rank = p.at(5);
      std::vector<cuuint64_t> dims(rank), strides(rank > 1 ? rank - 1 : 1, 0);
      std::vector<cuuint32_t> box(rank), unit(rank, 1);
      for (int64_t i = 0; i < rank; ++i) dims[i] = static_cast<cuuint64_t>(p.at(8 + i));
      for (int64_t i = 0; i + 1 < rank; ++i) strides[i] = static_cast<cuuint64_t>(p.at(8 + rank + i));
      for (int64_t i = 0; i < rank; ++i) box[i] = static_cast<cuuint32_t>(p.at(8 + 2 * rank - 1 + i));
      CUtensorMap map;
      check(driver().encode(&map, static_cast<CUtensorMapDataType>(p.at(4)), static_cast<cuuint32_t>(rank),
                            reinterpret_cast<void*>(static_cast<uintptr_t>(p.at(3))), dims.data(), strides.data(),
                            box.data(), unit.data(), CU_TENSOR_MAP_INTERLEAVE_NONE,
                            static_cast<CUtensorMapSwizzle>(p.at(6)), CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                            static_cast<CUtensorMapFloatOOBfill>(p.at(7))),
            "cuTensorMapEncodeTiled");
      q.map = static_cast<int64_t>(l.maps.size());
      l.maps.push_back(map);
    }
    l.params.push_back(q);
  }
  return l;
}

// Registers a program; returns its id. ``launches`` holds, per launch, the CUfunction (as an integer), [grid x, y, z,
// threads per block, dynamic shared bytes] and the parameters; ``expect_*`` input 0's layout (Program).
int64_t register_program(int64_t n_inputs, int64_t n_slots, std::vector<std::vector<int64_t>> code,
                         std::vector<int64_t> functions, std::vector<std::vector<int64_t>> shapes,
                         std::vector<std::vector<std::vector<int64_t>>> params, std::vector<int64_t> outputs,
                         std::vector<int64_t> expect_sizes, std::vector<int64_t> expect_strides,
                         int64_t expect_align) {
  Program p;
  p.n_inputs = n_inputs;
  p.n_slots = n_slots;
  p.code = std::move(code);
  p.outputs = std::move(outputs);
  p.expect_sizes = std::move(expect_sizes);
  p.expect_strides = std::move(expect_strides);
  p.expect_align = expect_align;
  for (size_t i = 0; i < functions.size(); ++i) p.launches.push_back(make_launch(functions[i], shapes.at(i), params.at(i)));
  std::lock_guard<std::mutex> guard(registry_lock());
  programs().push_back(std::move(p));
  return static_cast<int64_t>(programs().size()) - 1;
}

void launch(const Launch& l, const std::vector<at::Tensor>& slots, CUstream stream) {
  const size_t n = l.params.size();
  std::vector<uint64_t> scalars(n, 0);
  std::vector<CUtensorMap> maps(l.maps);
  std::vector<void*> args(n, nullptr);
  for (size_t i = 0; i < n; ++i) {
    const Param& p = l.params[i];
    void* at = &scalars[i];
    switch (p.kind) {
      case P_PTR: scalars[i] = reinterpret_cast<uint64_t>(slots[p.value].data_ptr()) + p.offset; break;
      case P_NULL: break;
      case P_I8: { int8_t v = static_cast<int8_t>(p.value); std::memcpy(at, &v, 1); break; }
      case P_I16: { int16_t v = static_cast<int16_t>(p.value); std::memcpy(at, &v, 2); break; }
      case P_I32: { int32_t v = static_cast<int32_t>(p.value); std::memcpy(at, &v, 4); break; }
      case P_B16: { uint16_t v = static_cast<uint16_t>(p.value); std::memcpy(at, &v, 2); break; }
      case P_B32: { uint32_t v = static_cast<uint32_t>(p.value); std::memcpy(at, &v, 4); break; }
      case P_I64:
      case P_B64: scalars[i] = static_cast<uint64_t>(p.value); break;
      case P_TMAP:
        check(driver().replace(&maps[p.map], static_cast<char*>(slots[p.value].data_ptr()) + p.offset),
              "cuTensorMapReplaceAddress");
        at = &maps[p.map];
        break;
      default: throw std::runtime_error("kernels.replay: unknown parameter kind " + std::to_string(p.kind));
    }
    args[i] = at;
  }
  check(driver().launch(l.function, l.grid[0], l.grid[1], l.grid[2], l.block, 1, 1, l.shared, stream, args.data(),
                        nullptr),
        "cuLaunchKernel");
}

// ``bytes`` zero bytes from ``offset`` bytes into ``t``'s data: one memset on the call's stream on the GPU.
void zero_bytes(const at::Tensor& t, int64_t offset, size_t bytes, CUstream stream) {
  if (bytes == 0) return;
  char* start = static_cast<char*>(t.data_ptr()) + offset;
  if (!t.is_cuda()) {
    std::memset(start, 0, bytes);
    return;
  }
  const auto at = reinterpret_cast<CUdeviceptr>(start);
  if (at % 4 == 0 && bytes % 4 == 0)
    check(driver().memset32(at, 0, bytes / 4, stream), "cuMemsetD32Async");
  else
    check(driver().memset8(at, 0, bytes, stream), "cuMemsetD8Async");
}

// A zero fill: of a tensor whose elements fill one range of memory, zero_bytes (on the GPU one memset on the call's
// stream: an ATen fill goes through the dispatcher and the runtime's kernel launch, several times the host time);
// otherwise zero_.
void fill_zero(const at::Tensor& t, CUstream stream) {
  if (!t.is_non_overlapping_and_dense()) {
    t.zero_();
    return;
  }
  zero_bytes(t, 0, static_cast<size_t>(t.numel()) * t.element_size(), stream);
}

at::Tensor as_expected(const at::Tensor& g, const Program& p) {
  const bool aligned = reinterpret_cast<uintptr_t>(g.data_ptr()) % static_cast<uintptr_t>(p.expect_align) == 0;
  if (g.sizes().vec() == p.expect_sizes && g.strides().vec() == p.expect_strides && aligned) return g;
  return at::empty_strided(p.expect_sizes, p.expect_strides, g.options()).copy_(g);
}

std::vector<at::Tensor> run_timed(int64_t id, std::vector<at::Tensor> inputs, std::vector<double>* spent);

std::vector<at::Tensor> run(int64_t id, std::vector<at::Tensor> inputs) {
  return run_timed(id, std::move(inputs), nullptr);
}

// Host µs of each instruction of program ``id``, the mean over ``reps`` runs on ``inputs`` (what a replayed call's
// host time is made of: python -m benchmarks.replay --parts).
std::vector<double> instruction_us(int64_t id, std::vector<at::Tensor> inputs, int64_t reps) {
  std::vector<double> spent(program(id).code.size(), 0.0);
  for (int64_t r = 0; r < reps; ++r) run_timed(id, inputs, &spent);
  for (double& s : spent) s /= static_cast<double>(reps);
  return spent;
}

std::vector<at::Tensor> run_timed(int64_t id, std::vector<at::Tensor> inputs, std::vector<double>* spent) {
  const Program& p = program(id);
  if (static_cast<int64_t>(inputs.size()) != p.n_inputs)
    throw std::invalid_argument("kernels.replay: program " + std::to_string(id) + " takes " +
                                std::to_string(p.n_inputs) + " inputs, got " + std::to_string(inputs.size()));
  std::vector<at::Tensor> slots(std::move(inputs));
  if (p.expect_align > 0) slots[0] = as_expected(slots[0], p);
  slots.resize(p.n_slots);
  const c10::Device device = slots[0].device();
  CUstream stream = nullptr;
  if (device.is_cuda()) {
    c10::impl::VirtualGuardImpl impl(device.type());
    stream = static_cast<CUstream>(impl.getStream(device).native_handle());
  }
  for (size_t at_ins = 0; at_ins < p.code.size(); ++at_ins) {
    const auto& ins = p.code[at_ins];
    const auto start = spent ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point();
    switch (ins[0]) {
      case ALLOC: {  // [ALLOC, out, dtype, zero, ndim, sizes, strides]
        const int64_t nd = ins[4];
        auto t = at::empty_strided(take(ins, 5, nd), take(ins, 5 + nd, nd),
                                   at::TensorOptions().dtype(static_cast<at::ScalarType>(ins[2])).device(device));
        if (ins[3]) fill_zero(t, stream);
        slots[ins[1]] = std::move(t);
        break;
      }
      case VIEW: {  // [VIEW, out, base, storage offset - base's, ndim, sizes, strides]
        const at::Tensor& base = slots[ins[2]];
        const int64_t nd = ins[4];
        slots[ins[1]] = base.as_strided(take(ins, 5, nd), take(ins, 5 + nd, nd), base.storage_offset() + ins[3]);
        break;
      }
      case ZERO: fill_zero(slots[ins[1]], stream); break;  // [ZERO, slot]
      case ZERO_BYTES:  // [ZERO_BYTES, slot, byte offset, bytes]: a range of a pooled allocation (record.py)
        zero_bytes(slots[ins[1]], ins[2], static_cast<size_t>(ins[3]), stream);
        break;
      case SUM: {  // [SUM, out, in, ndims, dims]
        slots[ins[1]] = slots[ins[2]].sum(take(ins, 4, ins[3]));
        break;
      }
      case COPY: {  // [COPY, out, in, ndim, sizes, strides]: the input copied into a tensor of the recorded layout
        const int64_t nd = ins[3];
        const at::Tensor& from = slots[ins[2]];
        slots[ins[1]] = at::empty_strided(take(ins, 4, nd), take(ins, 4 + nd, nd), from.options()).copy_(from);
        break;
      }
      case LAUNCH: launch(p.launches.at(ins[1]), slots, stream); break;
      default: throw std::runtime_error("kernels.replay: unknown instruction " + std::to_string(ins[0]));
    }
    if (spent)
      (*spent)[at_ins] += std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
  }
  std::vector<at::Tensor> out;
  out.reserve(p.outputs.size());
  for (int64_t s : p.outputs) out.push_back(s >= 0 ? slots[s] : at::Tensor());
  return out;
}

// The paired entry's autograd node, written by hand as ATen's generated nodes are (a torch::autograd::Function costs
// several times the host time: its context's saved-data map, input and output bookkeeping, output wrapping). The
// forward program takes q, k, v, lam, beta (the last two (H,) fp32) and returns the output and what the backward
// reads; the backward program takes [dO, q, k, v, lam, beta, what the forward saved] and returns
// [dq, dk, dv, dlam, dbeta] (undefined where none). Everything saved is a SavedVariable, as ctx.save_for_backward
// makes on the Python path: an input changed in place before the backward is an error, and saved-tensor hooks
// (activation checkpointing, offloading) see the same tensors.
using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
// std::shared_ptr<Node> in torch 2.11, c10::intrusive_ptr<Node> in 2.13 (pytorch#181782): new_node makes either
using NodePtr = decltype(torch::autograd::Edge::function);

struct ReplayedBackward : public Node {
  std::vector<SavedVariable> saved;
  int64_t program_id = -1;

  variable_list apply(variable_list&& grads) override {
    TORCH_CHECK(!saved.empty(), "kernels.replay: the paired call's backward ran twice; its saved tensors were freed "
                "(call backward with retain_graph=True to run it again)");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    std::vector<at::Tensor> inputs;
    inputs.reserve(saved.size() + 1);
    inputs.emplace_back();  // dO, below
    for (const SavedVariable& s : saved) inputs.push_back(s.unpack());
    // (run() looks the program up itself; only an output left out of the loss needs its layout here)
    inputs[0] = grads[0].defined() ? grads[0] : at::zeros(program(program_id).expect_sizes, inputs[1].options());
    std::vector<at::Tensor> d = run(program_id, std::move(inputs));
    d.resize(5);
    return d;
  }

  void release_variables() override {
    for (SavedVariable& s : saved) s.reset_data();
    saved.clear();
  }

  std::string name() const override { return "ReplayedPairedBackward"; }
};

template <class T, class Ptr>
auto new_node() {
  if constexpr (std::is_same_v<Ptr, std::shared_ptr<Node>>)
    return std::make_shared<T>();
  else
    return c10::make_intrusive<T>();
}

at::Tensor paired(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lam,
                  const at::Tensor& beta, int64_t fwd, int64_t bwd) {
  std::vector<at::Tensor> outs;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // (the program's operations record no history)
    outs = run(fwd, {q, k, v, lam, beta});
  }
  if (torch::autograd::compute_requires_grad(q, k, v, lam, beta)) {
    auto node = new_node<ReplayedBackward, NodePtr>();
    node->set_next_edges(torch::autograd::collect_next_edges(q, k, v, lam, beta));
    node->program_id = bwd;
    node->saved.reserve(5 + outs.size() - 1);
    for (const at::Tensor* t : {&q, &k, &v, &lam, &beta}) node->saved.emplace_back(*t, false);
    for (size_t i = 1; i < outs.size(); ++i) node->saved.emplace_back(outs[i], false);
    torch::autograd::set_history(outs[0], node);
  }
  return outs[0];
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("register_program", &register_program, py::arg("n_inputs"), py::arg("n_slots"), py::arg("code"),
        py::arg("functions"), py::arg("shapes"), py::arg("params"), py::arg("outputs"),
        py::arg("expect_sizes") = std::vector<int64_t>{}, py::arg("expect_strides") = std::vector<int64_t>{},
        py::arg("expect_align") = 0);
  m.def("run", &run);
  m.def("instruction_us", &instruction_us);
  m.def("paired", &paired);
}
