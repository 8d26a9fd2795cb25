// csrc/bindings.cpp — the Python face of the launchers (pybind11), compiled by the host C++
// compiler only, three times: into `_host` (the kernels run by the host executor), with
// SCRATCH_BUILD_CUDA into `_cuda` (the same launchers compiled by nvcc), and with
// SCRATCH_EMULATED_DEVICE into `_emulated`: the cuda backend's binding path
// (`__cuda_array_interface__`, device pointers checked against the device's allocations, streams)
// over the host executor's kernels, so that CI runs the cuda backend without a GPU. nvcc never
// sees pybind11.
//
// Arrays arrive as any Python object exposing `__array_interface__` (host: NumPy, or anything
// NumPy can view) or `__cuda_array_interface__` (cuda: CuPy, PyTorch, Numba). Each is described
// to C++ as a scratch::Tensor named after its argument; the launcher checks it. The GIL is
// released while kernels run. scratch::TypeError / ValueError / Error become Python TypeError /
// ValueError / RuntimeError.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "csrc/launchers.h"

#if defined(SCRATCH_BUILD_CUDA)
#include <cuda_runtime_api.h>
#endif
#if defined(SCRATCH_EMULATED_DEVICE)
#include <map>
#include <mutex>
#endif

namespace py = pybind11;
using namespace pybind11::literals;
using scratch::DType;
using scratch::Tensor;
namespace k = scratch::kernels;

namespace {

#if defined(SCRATCH_BUILD_CUDA) || defined(SCRATCH_EMULATED_DEVICE)
constexpr bool kDeviceMemory = true;
constexpr const char* kInterface = "__cuda_array_interface__";
constexpr const char* kOtherInterface = "__array_interface__";
constexpr const char* kBackend = "cuda";
#else
constexpr bool kDeviceMemory = false;
constexpr const char* kInterface = "__array_interface__";
constexpr const char* kOtherInterface = "__cuda_array_interface__";
constexpr const char* kBackend = "host";
#endif

DType parse_typestr(const std::string& typestr, const char* name) {
    using scratch::str;
    if (typestr.size() < 3 || typestr[0] == '>')
        throw scratch::TypeError(str(name, ": unsupported dtype (typestr '", typestr, "')"));
    const std::string code = typestr.substr(1);
    if (code == "f4") return DType::F32;
    if (code == "f8") return DType::F64;
    if (code == "f2") return DType::F16;
    if (code == "i4") return DType::I32;
    if (code == "i8") return DType::I64;
    if (code == "u1") return DType::U8;
    if (code == "u2") return DType::U16;   // also bfloat16 data, as a uint16 view (core/half.h)
    if (code == "b1") return DType::Bool;
    throw scratch::TypeError(str(name, ": unsupported dtype (typestr '", typestr, "')"));
}

#if defined(SCRATCH_EMULATED_DEVICE)
// The emulated device's memory: the allocations its array module (kernels/emulated.py) made,
// start -> bytes. A pointer outside every live allocation is refused as cudaPointerGetAttributes
// would refuse host memory, so a NumPy buffer dressed up with __cuda_array_interface__ fails here.
struct DeviceAllocations {
    std::mutex m;
    std::map<uintptr_t, size_t> live;
    // bytes of the allocation holding [p, p + extent), or 0 when none does
    bool holds(uintptr_t p, uint64_t extent) {
        std::lock_guard<std::mutex> lock(m);
        auto it = live.upper_bound(p);
        if (it == live.begin()) return false;
        --it;
        return p >= it->first && p + extent <= it->first + it->second;
    }
};
DeviceAllocations& device_allocations() {
    static DeviceAllocations* a = new DeviceAllocations();
    return *a;
}
#endif

// Describe a Python array as a Tensor; `name` is the argument's name (a string literal).
Tensor as_tensor(py::handle obj, const char* name) {
    using scratch::str;
    const std::string type = py::str(py::type::handle_of(obj).attr("__name__"));
    if (!py::hasattr(obj, kInterface)) {
        if (py::hasattr(obj, kOtherInterface))
            throw scratch::TypeError(str(name, ": the ", kBackend, " backend takes ",
                                         kDeviceMemory ? "device arrays (CuPy, PyTorch CUDA)"
                                                       : "host arrays (NumPy)",
                                         ", got a ", kDeviceMemory ? "host" : "device", " array (",
                                         type, ")"));
        throw scratch::TypeError(str(name, ": expected an array exposing ", kInterface, ", got ", type));
    }
    py::dict ai = obj.attr(kInterface);
    Tensor t;
    t.name = name;
    t.on_device = kDeviceMemory;
    py::tuple data = ai["data"];
    t.data = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
    t.readonly = data[1].cast<bool>();
    t.dtype = parse_typestr(ai["typestr"].cast<std::string>(), name);
    py::tuple shape = ai["shape"];
    if (shape.size() > size_t(Tensor::kMaxDims))
        throw scratch::ValueError(str(name, ": at most ", Tensor::kMaxDims, " dimensions, got ", shape.size()));
    t.ndim = int(shape.size());
    for (int i = 0; i < t.ndim; ++i) t.shape[i] = shape[i].cast<int64_t>();
    const int64_t item = int64_t(scratch::dtype_size(t.dtype));
    if (ai.contains("strides") && !ai["strides"].is_none()) {
        py::tuple strides = ai["strides"];
        for (int i = 0; i < t.ndim; ++i) {
            const int64_t bytes = strides[i].cast<int64_t>();
            if (bytes % item)
                throw scratch::ValueError(str(name, ": strides are not a multiple of the item size"));
            t.strides[i] = bytes / item;
        }
    } else {
        int64_t s = 1;
        for (int i = t.ndim - 1; i >= 0; --i) t.strides[i] = s, s *= t.shape[i];
    }
    if (ai.contains("mask") && !ai["mask"].is_none())
        throw scratch::ValueError(str(name, ": masked arrays are not supported"));
#if defined(SCRATCH_BUILD_CUDA)
    if (t.data && t.numel() > 0) {   // the memory must be on the current device
        cudaPointerAttributes attr{};
        if (cudaPointerGetAttributes(&attr, t.data) != cudaSuccess) {
            cudaGetLastError();
            throw scratch::TypeError(str(name, ": not a CUDA device pointer"));
        }
        int device = -1;
        cudaGetDevice(&device);
        if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
            throw scratch::TypeError(str(name, ": not in device memory"));
        if (attr.device != device)
            throw scratch::ValueError(str(name, ": lives on device ", attr.device,
                                          " but the current device is ", device));
    }
#endif
#if defined(SCRATCH_EMULATED_DEVICE)
    if (t.data && t.numel() > 0) {   // the memory must be the emulated device's
        int64_t last = 0;            // offset of the last element reached through the strides
        for (int i = 0; i < t.ndim; ++i) {
            if (t.strides[i] < 0)
                throw scratch::ValueError(str(name, ": negative strides are not supported"));
            last += (t.shape[i] - 1) * t.strides[i];
        }
        if (!device_allocations().holds(reinterpret_cast<uintptr_t>(t.data), uint64_t(last + 1) * item))
            throw scratch::TypeError(str(name, ": not a CUDA device pointer (not memory of the "
                                           "emulated device)"));
    }
#endif
    return t;
}

k::Stream as_stream(uintptr_t stream) { return reinterpret_cast<k::Stream>(stream); }

py::dict build_info() {
    py::dict d;
    d["built"] = true;
#if defined(__clang__)
    d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    d["compiler"] = std::string("gcc ") + __VERSION__;
#endif
#if defined(SCRATCH_ASAN_BUILD)
    d["asan"] = true;
#endif
#if defined(SCRATCH_HOST_KERNEL_FMA)
    d["fma"] = bool(SCRATCH_HOST_KERNEL_FMA);   // the kernels' fmaf is the FMA instruction
#endif
#if defined(SCRATCH_BUILD_CUDA)
    d["cuda_compiler"] = SCRATCH_CUDA_COMPILER_VERSION;
    d["cuda_archs"] = SCRATCH_CUDA_ARCHS;
    d["cuda_runtime"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
    int driver = 0;
    if (cudaDriverGetVersion(&driver) == cudaSuccess && driver > 0)
        d["cuda_driver"] = std::to_string(driver / 1000) + "." + std::to_string(driver % 1000 / 10);
    else
        d["cuda_driver"] = py::none();
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess || count == 0) {
        cudaGetLastError();
        d["available"] = false;
        std::string why = "no CUDA GPU found";
        if (status == cudaErrorInsufficientDriver)
            why = "no NVIDIA driver, or one older than the CUDA " + d["cuda_runtime"].cast<std::string>() + " runtime";
        if (status != cudaSuccess)
            why += std::string(" (") + cudaGetErrorName(status) + ": " + cudaGetErrorString(status) + ")";
        d["reason"] = "no device: " + why;
        d["device"] = py::none();
    } else {
        int device = 0;
        cudaGetDevice(&device);
        cudaDeviceProp prop{};
        cudaGetDeviceProperties(&prop, device);
        d["available"] = true;
        d["reason"] = py::none();
        d["device"] = py::dict("index"_a = device, "name"_a = std::string(prop.name),
                               "memory_bytes"_a = size_t(prop.totalGlobalMem),
                               "compute_capability"_a = std::to_string(prop.major) + "." + std::to_string(prop.minor),
                               "multiprocessors"_a = prop.multiProcessorCount, "count"_a = count);
    }
#elif defined(SCRATCH_EMULATED_DEVICE)
    d["available"] = true;
    d["reason"] = py::none();
    d["emulated"] = true;
    d["threads"] = k::host_executor_threads();
#else
    d["available"] = true;
    d["reason"] = py::none();
    d["threads"] = k::host_executor_threads();
#endif
    return d;
}

}  // namespace

#if defined(SCRATCH_BUILD_CUDA)
PYBIND11_MODULE(_cuda, m) {
#elif defined(SCRATCH_EMULATED_DEVICE)
PYBIND11_MODULE(_emulated, m) {
#else
PYBIND11_MODULE(_host, m) {
#endif
    m.doc() = "scratchgpt kernels (launchers bound from csrc/*.cu); see python/scratchgpt/kernels";
#if defined(SCRATCH_HOST_KERNEL_FMA) && SCRATCH_HOST_KERNEL_FMA
    // The kernel objects were compiled with -mfma (CMakeLists.txt): on a CPU without FMA their
    // first fmaf would be an illegal instruction, so refuse to load instead.
    if (!__builtin_cpu_supports("fma"))
        throw py::import_error("scratchgpt's host kernels were built for a CPU with FMA instructions "
                               "and this CPU has none: rebuild them on this machine (pip install -e .)");
#endif
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const scratch::TypeError& e) {
            PyErr_SetString(PyExc_TypeError, e.what());
        } catch (const scratch::ValueError& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        } catch (const scratch::Error& e) {
            PyErr_SetString(PyExc_RuntimeError, e.what());
        }
    });
    m.attr("BACKEND") = kBackend;
    m.def("info", &build_info, "What this module was built with, and the device it sees.");
#if defined(SCRATCH_EMULATED_DEVICE)
    m.def("register_allocation",
          [](uintptr_t ptr, size_t bytes) {
              std::lock_guard<std::mutex> lock(device_allocations().m);
              device_allocations().live[ptr] = bytes;
          },
          "ptr"_a, "bytes"_a, "Record [ptr, ptr + bytes) as memory of the emulated device.");
    m.def("release_allocation",
          [](uintptr_t ptr) {
              std::lock_guard<std::mutex> lock(device_allocations().m);
              device_allocations().live.erase(ptr);
          },
          "ptr"_a);
#endif

    // ------------------------------------------------------------------------ layernorm.cu
    m.def("layernorm_forward",
          [](py::object out, py::object mean, py::object rstd, py::object x, py::object weight,
             py::object bias, float eps, uintptr_t stream) {
              Tensor t_out = as_tensor(out, "out"), t_mean = as_tensor(mean, "mean"),
                     t_rstd = as_tensor(rstd, "rstd"), t_x = as_tensor(x, "x"),
                     t_w = as_tensor(weight, "weight"), t_b = as_tensor(bias, "bias");
              py::gil_scoped_release nogil;
              k::layernorm_forward(t_out, t_mean, t_rstd, t_x, t_w, t_b, eps, as_stream(stream));
          },
          "out"_a, "mean"_a, "rstd"_a, "x"_a, "weight"_a, "bias"_a, "eps"_a, "stream"_a = 0);
    m.def("layernorm_backward_workspace", &k::layernorm_backward_workspace, "rows"_a, "C"_a);
    m.def("layernorm_backward",
          [](py::object dx, py::object dweight, py::object dbias, py::object workspace,
             py::object dout, py::object x, py::object weight, py::object mean, py::object rstd,
             uintptr_t stream) {
              Tensor t_dx = as_tensor(dx, "dx"), t_dw = as_tensor(dweight, "dweight"),
                     t_db = as_tensor(dbias, "dbias"), t_ws = as_tensor(workspace, "workspace"),
                     t_dout = as_tensor(dout, "dout"), t_x = as_tensor(x, "x"),
                     t_w = as_tensor(weight, "weight"), t_mean = as_tensor(mean, "mean"),
                     t_rstd = as_tensor(rstd, "rstd");
              py::gil_scoped_release nogil;
              k::layernorm_backward(t_dx, t_dw, t_db, t_ws, t_dout, t_x, t_w, t_mean, t_rstd,
                                    as_stream(stream));
          },
          "dx"_a, "dweight"_a, "dbias"_a, "workspace"_a, "dout"_a, "x"_a, "weight"_a, "mean"_a,
          "rstd"_a, "stream"_a = 0);

    // --------------------------------------------------------- linear.cu, gelu.cu, residual.cu
    m.def("linear_forward",
          [](py::object out, py::object x, py::object weight, py::object bias, int version,
             uintptr_t stream) {
              Tensor t_out = as_tensor(out, "out"), t_x = as_tensor(x, "x"),
                     t_w = as_tensor(weight, "weight"), t_b;
              if (!bias.is_none()) t_b = as_tensor(bias, "bias");
              py::gil_scoped_release nogil;
              k::linear_forward(t_out, t_x, t_w, bias.is_none() ? nullptr : &t_b, version,
                                as_stream(stream));
          },
          "out"_a, "x"_a, "weight"_a, "bias"_a = py::none(), "version"_a = 2, "stream"_a = 0);
    m.def("linear_backward_workspace", &k::linear_backward_workspace, "rows"_a, "in_features"_a,
          "out_features"_a);
    m.def("linear_backward",
          [](py::object dx, py::object dweight, py::object dbias, py::object workspace,
             py::object dout, py::object x, py::object weight, int version, uintptr_t stream) {
              Tensor t_dx = as_tensor(dx, "dx"), t_dw = as_tensor(dweight, "dweight"), t_db,
                     t_ws = as_tensor(workspace, "workspace"), t_dout = as_tensor(dout, "dout"),
                     t_x = as_tensor(x, "x"), t_w = as_tensor(weight, "weight");
              if (!dbias.is_none()) t_db = as_tensor(dbias, "dbias");
              py::gil_scoped_release nogil;
              k::linear_backward(t_dx, t_dw, dbias.is_none() ? nullptr : &t_db, t_ws, t_dout, t_x,
                                 t_w, version, as_stream(stream));
          },
          "dx"_a, "dweight"_a, "dbias"_a, "workspace"_a, "dout"_a, "x"_a, "weight"_a,
          "version"_a = 2, "stream"_a = 0);
    // ------------------------------------------------------------------------ quant_linear.cu
    m.def("quant_linear_forward",
          [](py::object out, py::object x, py::object qweight, py::object scale, py::object zero,
             py::object bias, int bits, int group_size, int version, uintptr_t stream) {
              Tensor t_out = as_tensor(out, "out"), t_x = as_tensor(x, "x"),
                     t_q = as_tensor(qweight, "qweight"), t_s = as_tensor(scale, "scale"), t_z, t_b;
              if (!zero.is_none()) t_z = as_tensor(zero, "zero");
              if (!bias.is_none()) t_b = as_tensor(bias, "bias");
              py::gil_scoped_release nogil;
              k::quant_linear_forward(t_out, t_x, t_q, t_s, zero.is_none() ? nullptr : &t_z,
                                      bias.is_none() ? nullptr : &t_b, bits, group_size, version,
                                      as_stream(stream));
          },
          "out"_a, "x"_a, "qweight"_a, "scale"_a, "zero"_a, "bias"_a, "bits"_a, "group_size"_a,
          "version"_a = 0, "stream"_a = 0);
    m.def("quant_linear_gemv_max_rows", &k::quant_linear_gemv_max_rows);
    m.def("quant_linear_dequantize",
          [](py::object out, py::object qweight, py::object scale, py::object zero, int bits,
             int group_size, uintptr_t stream) {
              Tensor t_out = as_tensor(out, "out"), t_q = as_tensor(qweight, "qweight"),
                     t_s = as_tensor(scale, "scale"), t_z;
              if (!zero.is_none()) t_z = as_tensor(zero, "zero");
              py::gil_scoped_release nogil;
              k::quant_linear_dequantize(t_out, t_q, t_s, zero.is_none() ? nullptr : &t_z, bits,
                                         group_size, as_stream(stream));
          },
          "out"_a, "qweight"_a, "scale"_a, "zero"_a, "bits"_a, "group_size"_a, "stream"_a = 0);
    m.attr("GELU_TANH") = int(k::kGeluTanh);
    m.attr("GELU_EXACT") = int(k::kGeluExact);
    m.def("gelu_forward",
          [](py::object out, py::object x, int mode, uintptr_t stream) {
              Tensor t_out = as_tensor(out, "out"), t_x = as_tensor(x, "x");
              py::gil_scoped_release nogil;
              k::gelu_forward(t_out, t_x, mode, as_stream(stream));
          },
          "out"_a, "x"_a, "mode"_a = int(k::kGeluTanh), "stream"_a = 0);
    m.def("gelu_backward",
          [](py::object dx, py::object dout, py::object x, int mode, uintptr_t stream) {
              Tensor t_dx = as_tensor(dx, "dx"), t_dout = as_tensor(dout, "dout"), t_x = as_tensor(x, "x");
              py::gil_scoped_release nogil;
              k::gelu_backward(t_dx, t_dout, t_x, mode, as_stream(stream));
          },
          "dx"_a, "dout"_a, "x"_a, "mode"_a = int(k::kGeluTanh), "stream"_a = 0);
    m.def("residual_forward",
          [](py::object out, py::object a, py::object b, uintptr_t stream) {
              Tensor t_out = as_tensor(out, "out"), t_a = as_tensor(a, "a"), t_b = as_tensor(b, "b");
              py::gil_scoped_release nogil;
              k::residual_forward(t_out, t_a, t_b, as_stream(stream));
          },
          "out"_a, "a"_a, "b"_a, "stream"_a = 0);

    // ------------------------------------------------------------------------------ gru.cu
    m.def("gru_forward",
          [](py::object h, py::object gates, py::object xp, py::object h0, py::object w_hh,
             py::object b_hh, uintptr_t stream) {
              Tensor t_h = as_tensor(h, "h"), t_g = as_tensor(gates, "gates"), t_xp = as_tensor(xp, "xp"),
                     t_h0 = as_tensor(h0, "h0"), t_w = as_tensor(w_hh, "w_hh"), t_b = as_tensor(b_hh, "b_hh");
              py::gil_scoped_release nogil;
              k::gru_forward(t_h, t_g, t_xp, t_h0, t_w, t_b, as_stream(stream));
          },
          "h"_a, "gates"_a, "xp"_a, "h0"_a, "w_hh"_a, "b_hh"_a, "stream"_a = 0);
    m.def("gru_backward",
          [](py::object dxp, py::object dhp, py::object dh0, py::object dh, py::object h,
             py::object gates, py::object h0, py::object w_hh, uintptr_t stream) {
              Tensor t_dxp = as_tensor(dxp, "dxp"), t_dhp = as_tensor(dhp, "dhp"),
                     t_dh0 = as_tensor(dh0, "dh0"), t_dh = as_tensor(dh, "dh"), t_h = as_tensor(h, "h"),
                     t_g = as_tensor(gates, "gates"), t_h0 = as_tensor(h0, "h0"),
                     t_w = as_tensor(w_hh, "w_hh");
              py::gil_scoped_release nogil;
              k::gru_backward(t_dxp, t_dhp, t_dh0, t_dh, t_h, t_g, t_h0, t_w, as_stream(stream));
          },
          "dxp"_a, "dhp"_a, "dh0"_a, "dh"_a, "h"_a, "gates"_a, "h0"_a, "w_hh"_a, "stream"_a = 0);
    m.def("gru_shared_u_limit", &k::gru_shared_u_limit, "itemsize"_a);

    // ------------------------------------------------------------------------ attention.cu
    m.def("attention_forward",
          [](py::object y, py::object lse, py::object qkv, int n_head, int window, uintptr_t stream) {
              Tensor t_y = as_tensor(y, "y"), t_lse = as_tensor(lse, "lse"), t_qkv = as_tensor(qkv, "qkv");
              py::gil_scoped_release nogil;
              k::attention_forward(t_y, t_lse, t_qkv, n_head, window, as_stream(stream));
          },
          "y"_a, "lse"_a, "qkv"_a, "n_head"_a, "window"_a, "stream"_a = 0);
    m.def("attention_backward",
          [](py::object dqkv, py::object di, py::object dy, py::object qkv, py::object y, py::object lse,
             int n_head, int window, uintptr_t stream) {
              Tensor t_dqkv = as_tensor(dqkv, "dqkv"), t_di = as_tensor(di, "di"), t_dy = as_tensor(dy, "dy"),
                     t_qkv = as_tensor(qkv, "qkv"), t_y = as_tensor(y, "y"), t_lse = as_tensor(lse, "lse");
              py::gil_scoped_release nogil;
              k::attention_backward(t_dqkv, t_di, t_dy, t_qkv, t_y, t_lse, n_head, window, as_stream(stream));
          },
          "dqkv"_a, "di"_a, "dy"_a, "qkv"_a, "y"_a, "lse"_a, "n_head"_a, "window"_a, "stream"_a = 0);
    m.def("attention_materialized_forward",
          [](py::object y, py::object probs, py::object qkv, int n_head, int window, uintptr_t stream) {
              Tensor t_y = as_tensor(y, "y"), t_p = as_tensor(probs, "probs"), t_qkv = as_tensor(qkv, "qkv");
              py::gil_scoped_release nogil;
              k::attention_materialized_forward(t_y, t_p, t_qkv, n_head, window, as_stream(stream));
          },
          "y"_a, "probs"_a, "qkv"_a, "n_head"_a, "window"_a, "stream"_a = 0);
    m.def("attention_materialized_backward",
          [](py::object dqkv, py::object dprobs, py::object dy, py::object qkv, py::object probs, int n_head,
             int window, uintptr_t stream) {
              Tensor t_dqkv = as_tensor(dqkv, "dqkv"), t_dp = as_tensor(dprobs, "dprobs"),
                     t_dy = as_tensor(dy, "dy"), t_qkv = as_tensor(qkv, "qkv"), t_p = as_tensor(probs, "probs");
              py::gil_scoped_release nogil;
              k::attention_materialized_backward(t_dqkv, t_dp, t_dy, t_qkv, t_p, n_head, window,
                                                 as_stream(stream));
          },
          "dqkv"_a, "dprobs"_a, "dy"_a, "qkv"_a, "probs"_a, "n_head"_a, "window"_a, "stream"_a = 0);
    m.def("attention_decode",
          [](py::object y, py::object q, py::object k_cache, py::object v_cache, int t0, int window,
             uintptr_t stream) {
              Tensor t_y = as_tensor(y, "y"), t_q = as_tensor(q, "q"), t_k = as_tensor(k_cache, "k_cache"),
                     t_v = as_tensor(v_cache, "v_cache");
              py::gil_scoped_release nogil;
              k::attention_decode(t_y, t_q, t_k, t_v, t0, window, as_stream(stream));
          },
          "y"_a, "q"_a, "k_cache"_a, "v_cache"_a, "t0"_a, "window"_a, "stream"_a = 0);
    // ------------------------------------------------------------------------ embedding.cu
    m.def("embedding_forward",
          [](py::object out, py::object idx, py::object wte, py::object wpe, py::object status,
             uintptr_t stream) {
              Tensor t_out = as_tensor(out, "out"), t_idx = as_tensor(idx, "idx"),
                     t_wte = as_tensor(wte, "wte"), t_wpe = as_tensor(wpe, "wpe"),
                     t_status = as_tensor(status, "status");
              py::gil_scoped_release nogil;
              k::embedding_forward(t_out, t_idx, t_wte, t_wpe, t_status, as_stream(stream));
          },
          "out"_a, "idx"_a, "wte"_a, "wpe"_a, "status"_a, "stream"_a = 0);
    m.def("embedding_backward_workspace", &k::embedding_backward_workspace, "vocab_size"_a,
          "positions"_a);
    m.def("embedding_backward",
          [](py::object dwte, py::object dwpe, py::object workspace, py::object dout, py::object idx,
             uintptr_t stream) {
              Tensor t_dwte = as_tensor(dwte, "dwte"), t_dwpe = as_tensor(dwpe, "dwpe"),
                     t_ws = as_tensor(workspace, "workspace"), t_dout = as_tensor(dout, "dout"),
                     t_idx = as_tensor(idx, "idx");
              py::gil_scoped_release nogil;
              k::embedding_backward(t_dwte, t_dwpe, t_ws, t_dout, t_idx, as_stream(stream));
          },
          "dwte"_a, "dwpe"_a, "workspace"_a, "dout"_a, "idx"_a, "stream"_a = 0);

    // --------------------------------------------------------------------- softmax_xent.cu
    m.def("softmax_xent_forward",
          [](py::object loss, py::object stats, py::object row_loss, py::object count,
             py::object status, py::object logits, py::object targets, uintptr_t stream) {
              Tensor t_loss = as_tensor(loss, "loss"), t_stats = as_tensor(stats, "stats"),
                     t_row = as_tensor(row_loss, "row_loss"), t_count = as_tensor(count, "count"),
                     t_status = as_tensor(status, "status"), t_logits = as_tensor(logits, "logits"),
                     t_targets = as_tensor(targets, "targets");
              py::gil_scoped_release nogil;
              k::softmax_xent_forward(t_loss, t_stats, t_row, t_count, t_status, t_logits, t_targets,
                                      as_stream(stream));
          },
          "loss"_a, "stats"_a, "row_loss"_a, "count"_a, "status"_a, "logits"_a, "targets"_a,
          "stream"_a = 0);
    m.def("softmax_xent_backward",
          [](py::object dlogits, py::object logits, py::object stats, py::object targets,
             py::object count, float dloss, uintptr_t stream) {
              Tensor t_dlogits = as_tensor(dlogits, "dlogits"), t_logits = as_tensor(logits, "logits"),
                     t_stats = as_tensor(stats, "stats"), t_targets = as_tensor(targets, "targets"),
                     t_count = as_tensor(count, "count");
              py::gil_scoped_release nogil;
              k::softmax_xent_backward(t_dlogits, t_logits, t_stats, t_targets, t_count, dloss,
                                       as_stream(stream));
          },
          "dlogits"_a, "logits"_a, "stats"_a, "targets"_a, "count"_a, "dloss"_a, "stream"_a = 0);

    // -------------------------------------------------------------------------- dropout.cu
    m.def("dropout_apply",
          [](py::object out, py::object x, uint32_t threshold, float scale, uint64_t seed,
             uint64_t stream_id, uint64_t offset, uintptr_t stream) {
              Tensor t_out = as_tensor(out, "out"), t_x = as_tensor(x, "x");
              py::gil_scoped_release nogil;
              k::dropout_apply(t_out, t_x, threshold, scale, seed, stream_id, offset, as_stream(stream));
          },
          "out"_a, "x"_a, "threshold"_a, "scale"_a, "seed"_a, "stream_id"_a, "offset"_a,
          "stream"_a = 0);
    m.def("dropout_philox_blocks",
          [](py::object words, uint64_t seed, uint64_t stream_id, uint64_t first, uintptr_t stream) {
              Tensor t_words = as_tensor(words, "words");
              py::gil_scoped_release nogil;
              k::dropout_philox_blocks(t_words, seed, stream_id, first, as_stream(stream));
          },
          "words"_a, "seed"_a, "stream_id"_a, "first"_a, "stream"_a = 0);

    // ---------------------------------------------------------------------------- adamw.cu
    m.def("adamw_update",
          [](py::object param, py::object grad, py::object m_, py::object v, int64_t step, double lr,
             double beta1, double beta2, double eps, double weight_decay, py::object lowp,
             uintptr_t stream) {
              Tensor t_p = as_tensor(param, "param"), t_g = as_tensor(grad, "grad"),
                     t_m = as_tensor(m_, "m"), t_v = as_tensor(v, "v"), t_low;
              if (!lowp.is_none()) t_low = as_tensor(lowp, "lowp");
              py::gil_scoped_release nogil;
              k::adamw_update(t_p, t_g, t_m, t_v, lowp.is_none() ? nullptr : &t_low, step, lr, beta1,
                              beta2, eps, weight_decay, as_stream(stream));
          },
          "param"_a, "grad"_a, "m"_a, "v"_a, "step"_a, "lr"_a, "beta1"_a, "beta2"_a, "eps"_a,
          "weight_decay"_a, "lowp"_a = py::none(), "stream"_a = 0);
    m.def("global_norm_blocks", &k::global_norm_blocks, "n"_a);
    m.def("global_norm_partials",
          [](py::object partials, py::object x, uintptr_t stream) {
              Tensor t_part = as_tensor(partials, "partials"), t_x = as_tensor(x, "x");
              py::gil_scoped_release nogil;
              k::global_norm_partials(t_part, t_x, as_stream(stream));
          },
          "partials"_a, "x"_a, "stream"_a = 0);
    m.def("global_norm_finish",
          [](py::object norm, py::object partials, uintptr_t stream) {
              Tensor t_norm = as_tensor(norm, "norm"), t_part = as_tensor(partials, "partials");
              py::gil_scoped_release nogil;
              k::global_norm_finish(t_norm, t_part, as_stream(stream));
          },
          "norm"_a, "partials"_a, "stream"_a = 0);
    m.def("global_norm_clip",
          [](py::object x, float factor, uintptr_t stream) {
              Tensor t_x = as_tensor(x, "x");
              py::gil_scoped_release nogil;
              k::global_norm_clip(t_x, factor, as_stream(stream));
          },
          "x"_a, "factor"_a, "stream"_a = 0);

    // ----------------------------------------------- tests/kernels/mma_tests.cu (not an op)
    m.def("mma_test_convert",
          [](py::object bits_out, py::object floats_out, py::object x, py::object bits_in, int kind,
             uintptr_t stream) {
              Tensor t_bo = as_tensor(bits_out, "bits_out"), t_fo = as_tensor(floats_out, "floats_out"),
                     t_x = as_tensor(x, "x"), t_bi = as_tensor(bits_in, "bits_in");
              py::gil_scoped_release nogil;
              k::mma_test_convert(t_bo, t_fo, t_x, t_bi, kind, as_stream(stream));
          },
          "bits_out"_a, "floats_out"_a, "x"_a, "bits_in"_a, "kind"_a, "stream"_a = 0);
    m.def("mma_test_storage_scale",
          [](py::object out, py::object in, float scale, uintptr_t stream) {
              Tensor t_out = as_tensor(out, "out"), t_in = as_tensor(in, "in");
              py::gil_scoped_release nogil;
              k::mma_test_storage_scale(t_out, t_in, scale, as_stream(stream));
          },
          "out"_a, "in"_a, "scale"_a, "stream"_a = 0);
    m.def("mma_test_fragments",
          [](py::object d, py::object a, py::object b, py::object c, int kind, int repeat, int warps_per_block,
             int block_x, int variant, uintptr_t stream) {
              Tensor t_d = as_tensor(d, "d"), t_a = as_tensor(a, "a"), t_b = as_tensor(b, "b"),
                     t_c = as_tensor(c, "c");
              py::gil_scoped_release nogil;
              k::mma_test_fragments(t_d, t_a, t_b, t_c, kind, repeat, warps_per_block, block_x, variant,
                                    as_stream(stream));
          },
          "d"_a, "a"_a, "b"_a, "c"_a, "kind"_a, "repeat"_a = 1, "warps_per_block"_a = 1, "block_x"_a = 32,
          "variant"_a = 0, "stream"_a = 0);
    m.def("mma_test_ldmatrix",
          [](py::object out, py::object tile, py::object offsets, int num, int trans, int clobber,
             uintptr_t stream) {
              Tensor t_out = as_tensor(out, "out"), t_tile = as_tensor(tile, "tile"),
                     t_off = as_tensor(offsets, "offsets");
              py::gil_scoped_release nogil;
              k::mma_test_ldmatrix(t_out, t_tile, t_off, num, trans, clobber, as_stream(stream));
          },
          "out"_a, "tile"_a, "offsets"_a, "num"_a, "trans"_a, "clobber"_a = 0, "stream"_a = 0);
    m.def("mma_test_gemm",
          [](py::object d, py::object a, py::object b, int kind, int b_layout, int variant, uintptr_t stream) {
              Tensor t_d = as_tensor(d, "d"), t_a = as_tensor(a, "a"), t_b = as_tensor(b, "b");
              py::gil_scoped_release nogil;
              k::mma_test_gemm(t_d, t_a, t_b, kind, b_layout, variant, as_stream(stream));
          },
          "d"_a, "a"_a, "b"_a, "kind"_a, "b_layout"_a, "variant"_a = 0, "stream"_a = 0);
    m.def("mma_test_chain",
          [](py::object out, py::object p, py::object a, py::object b1, py::object b2, int kind, uintptr_t stream) {
              Tensor t_out = as_tensor(out, "out"), t_p = as_tensor(p, "p"), t_a = as_tensor(a, "a"),
                     t_b1 = as_tensor(b1, "b1"), t_b2 = as_tensor(b2, "b2");
              py::gil_scoped_release nogil;
              k::mma_test_chain(t_out, t_p, t_a, t_b1, t_b2, kind, as_stream(stream));
          },
          "out"_a, "p"_a, "a"_a, "b1"_a, "b2"_a, "kind"_a, "stream"_a = 0);
#if !defined(SCRATCH_BUILD_CUDA)
    {
        py::list mma_cases;
        for (const char* const* c = k::kMmaMisuseCases; *c; ++c) mma_cases.append(*c);
        m.attr("MMA_MISUSE_CASES") = py::tuple(mma_cases);
    }
    m.def("mma_test_misuse",
          [](const std::string& which) {
              py::gil_scoped_release nogil;
              k::mma_test_misuse(which.c_str());
          },
          "which"_a);
#endif

    // ------------------------------------------ tests/kernels/executor_tests.cu (not an op)
    m.def("exec_test_shuffles",
          [](py::object out, py::object in, int block, int width, int delta, int src_lane, uintptr_t stream) {
              Tensor t_out = as_tensor(out, "out"), t_in = as_tensor(in, "in");
              py::gil_scoped_release nogil;
              k::exec_test_shuffles(t_out, t_in, block, width, delta, src_lane, as_stream(stream));
          },
          "out"_a, "in"_a, "block"_a, "width"_a, "delta"_a, "src_lane"_a, "stream"_a = 0);
    m.def("exec_test_votes",
          [](py::object out, py::object predicate, int block, uintptr_t stream) {
              Tensor t_out = as_tensor(out, "out"), t_p = as_tensor(predicate, "predicate");
              py::gil_scoped_release nogil;
              k::exec_test_votes(t_out, t_p, block, as_stream(stream));
          },
          "out"_a, "predicate"_a, "block"_a, "stream"_a = 0);
    m.def("exec_test_partial_masks",
          [](py::object out, py::object in, int block, uintptr_t stream) {
              Tensor t_out = as_tensor(out, "out"), t_in = as_tensor(in, "in");
              py::gil_scoped_release nogil;
              k::exec_test_partial_masks(t_out, t_in, block, as_stream(stream));
          },
          "out"_a, "in"_a, "block"_a, "stream"_a = 0);
    m.def("exec_test_block_sum",
          [](py::object out, py::object in, int bx, int by, int bz, uintptr_t stream) {
              Tensor t_out = as_tensor(out, "out"), t_in = as_tensor(in, "in");
              py::gil_scoped_release nogil;
              k::exec_test_block_sum(t_out, t_in, bx, by, bz, as_stream(stream));
          },
          "out"_a, "in"_a, "bx"_a, "by"_a, "bz"_a, "stream"_a = 0);
    m.def("exec_test_transpose",
          [](py::object out, py::object in, uintptr_t stream) {
              Tensor t_out = as_tensor(out, "out"), t_in = as_tensor(in, "in");
              py::gil_scoped_release nogil;
              k::exec_test_transpose(t_out, t_in, as_stream(stream));
          },
          "out"_a, "in"_a, "stream"_a = 0);
    m.def("exec_test_atomics",
          [](py::object sum, py::object max, py::object count, py::object histogram,
             py::object values, py::object ints, uintptr_t stream) {
              Tensor t_sum = as_tensor(sum, "sum"), t_max = as_tensor(max, "max"),
                     t_count = as_tensor(count, "count"), t_hist = as_tensor(histogram, "histogram"),
                     t_values = as_tensor(values, "values"), t_ints = as_tensor(ints, "ints");
              py::gil_scoped_release nogil;
              k::exec_test_atomics(t_sum, t_max, t_count, t_hist, t_values, t_ints, as_stream(stream));
          },
          "sum"_a, "max"_a, "count"_a, "histogram"_a, "values"_a, "ints"_a, "stream"_a = 0);
    m.def("exec_test_grid3d",
          [](py::object out, int gx, int gy, int gz, int bx, int by, int bz, uintptr_t stream) {
              Tensor t_out = as_tensor(out, "out");
              py::gil_scoped_release nogil;
              k::exec_test_grid3d(t_out, gx, gy, gz, bx, by, bz, as_stream(stream));
          },
          "out"_a, "gx"_a, "gy"_a, "gz"_a, "bx"_a, "by"_a, "bz"_a, "stream"_a = 0);
    m.def("exec_test_dynamic_smem",
          [](py::object out, py::object in, int block, uintptr_t stream) {
              Tensor t_out = as_tensor(out, "out"), t_in = as_tensor(in, "in");
              py::gil_scoped_release nogil;
              k::exec_test_dynamic_smem(t_out, t_in, block, as_stream(stream));
          },
          "out"_a, "in"_a, "block"_a, "stream"_a = 0);
    m.def("exec_test_activemask",
          [](py::object out, py::object predicate, int block, int live, uintptr_t stream) {
              Tensor t_out = as_tensor(out, "out"), t_p = as_tensor(predicate, "predicate");
              py::gil_scoped_release nogil;
              k::exec_test_activemask(t_out, t_p, block, live, as_stream(stream));
          },
          "out"_a, "predicate"_a, "block"_a, "live"_a, "stream"_a = 0);
#if !defined(SCRATCH_BUILD_CUDA)
    m.def("exec_test_activemask_loop",
          [](py::object out, py::object trips, int block) {
              Tensor t_out = as_tensor(out, "out"), t_trips = as_tensor(trips, "trips");
              py::gil_scoped_release nogil;
              k::exec_test_activemask_loop(t_out, t_trips, block);
          },
          "out"_a, "trips"_a, "block"_a);
    m.def("exec_test_neighbour",
          [](py::object out, py::object in, int block, int mode) {
              Tensor t_out = as_tensor(out, "out"), t_in = as_tensor(in, "in");
              py::gil_scoped_release nogil;
              k::exec_test_neighbour(t_out, t_in, block, mode);
          },
          "out"_a, "in"_a, "block"_a, "mode"_a);
    m.def("exec_test_uninitialised",
          [](py::object out, py::object ints, py::object written, int block) {
              Tensor t_out = as_tensor(out, "out"), t_ints = as_tensor(ints, "ints"),
                     t_written = as_tensor(written, "written");
              py::gil_scoped_release nogil;
              k::exec_test_uninitialised(t_out, t_ints, t_written, block);
          },
          "out"_a, "ints"_a, "written"_a, "block"_a);
    py::list cases;
    for (const char* const* c = k::kExecMisuseCases; *c; ++c) cases.append(*c);
    m.attr("EXEC_MISUSE_CASES") = py::tuple(cases);
    m.def("exec_test_misuse",
          [](const std::string& which) {
              py::gil_scoped_release nogil;
              k::exec_test_misuse(which.c_str());
          },
          "which"_a);
#endif
}
