// core/tensor.h — a tensor view (pointer, dtype, shape, strides) and the argument checks every
// launcher runs before a launch. Each check names the argument and says what was expected.
//
// Views never own memory: Python (NumPy / CuPy / PyTorch) allocates, bindings.cpp describes the
// array to C++ as a Tensor, the launcher checks it and passes raw pointers to the kernel.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "errors.h"

namespace scratch {

enum class DType { F32, F64, F16, BF16, I32, I64, U8, Bool, U16 };

inline const char* dtype_name(DType d) {
    switch (d) {
        case DType::F32: return "float32";
        case DType::F64: return "float64";
        case DType::F16: return "float16";
        case DType::BF16: return "bfloat16";
        case DType::I32: return "int32";
        case DType::I64: return "int64";
        case DType::U8: return "uint8";
        case DType::Bool: return "bool";
        case DType::U16: return "uint16";   // also bfloat16 bits (core/half.h)
    }
    return "?";
}

inline size_t dtype_size(DType d) {
    switch (d) {
        case DType::F64: case DType::I64: return 8;
        case DType::F32: case DType::I32: return 4;
        case DType::F16: case DType::BF16: case DType::U16: return 2;
        default: return 1;
    }
}

template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::F32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::F64; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::I32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::I64; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::U8; };
template <> struct dtype_of<uint16_t> { static constexpr DType value = DType::U16; };

struct Tensor {
    static constexpr int kMaxDims = 8;
    const char* name = "tensor";     // the argument's name, used in every message
    void* data = nullptr;
    DType dtype = DType::F32;
    int ndim = 0;
    int64_t shape[kMaxDims] = {};
    int64_t strides[kMaxDims] = {};  // in elements
    bool on_device = false;          // device memory (CUDA) or host memory
    bool readonly = false;

    int64_t numel() const {
        int64_t n = 1;
        for (int i = 0; i < ndim; ++i) n *= shape[i];
        return n;
    }
    // Negative dims count from the end, as in NumPy.
    int64_t size(int dim) const { return shape[dim < 0 ? dim + ndim : dim]; }
    // Product of all but the last dimension: the number of rows of a [..., C] array.
    int64_t rows() const { return ndim == 0 ? 1 : numel() / shape[ndim - 1]; }
    bool contiguous() const {
        int64_t expected = 1;
        for (int i = ndim - 1; i >= 0; --i) {
            if (shape[i] != 1 && strides[i] != expected) return false;
            expected *= shape[i];
        }
        return true;
    }
    std::string shape_str() const {
        std::string s = "(";
        for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
        return s + (ndim == 1 ? ",)" : ")");
    }
    template <typename T> T* ptr() const { return static_cast<T*>(data); }
};

// ------------------------------------------------------------------------------------ checks
inline void expect_dtype(const Tensor& t, DType want) {
    if (t.dtype != want)
        throw TypeError(str(t.name, ": expected ", dtype_name(want), ", got ", dtype_name(t.dtype)));
}

inline void expect_contiguous(const Tensor& t) {
    if (!t.contiguous())
        throw ValueError(str(t.name, ": expected a C-contiguous array, got shape ", t.shape_str(),
                             " with non-contiguous strides (use ascontiguousarray)"));
}

inline void expect_writable(const Tensor& t) {
    if (t.readonly) throw ValueError(str(t.name, ": the output array is read-only"));
}

inline void expect_ndim(const Tensor& t, int lo, int hi) {
    if (t.ndim < lo || t.ndim > hi)
        throw ValueError(str(t.name, ": expected ", lo == hi ? std::to_string(lo)
                                                              : str(lo, " to ", hi),
                             " dimensions, got shape ", t.shape_str()));
}

// Exact shape; -1 in `want` matches any size.
inline void expect_shape(const Tensor& t, std::initializer_list<int64_t> want) {
    bool ok = (int)want.size() == t.ndim;
    int i = 0;
    for (int64_t w : want) {
        if (ok && w >= 0 && t.shape[i] != w) ok = false;
        ++i;
    }
    if (!ok) {
        std::string s = "(";
        int j = 0;
        for (int64_t w : want) s += (j++ ? ", " : "") + (w < 0 ? std::string("*") : std::to_string(w));
        throw ValueError(str(t.name, ": expected shape ", s, want.size() == 1 ? ",)" : ")", ", got ",
                             t.shape_str()));
    }
}

inline void expect_same_shape(const Tensor& t, const Tensor& like) {
    bool ok = t.ndim == like.ndim;
    for (int i = 0; ok && i < t.ndim; ++i) ok = t.shape[i] == like.shape[i];
    if (!ok)
        throw ValueError(str(t.name, ": expected the shape of ", like.name, " ", like.shape_str(),
                             ", got ", t.shape_str()));
}

// The usual trio for a float32 argument of a kernel: dtype, contiguity, (for outputs) writable.
inline void expect_input(const Tensor& t, DType want) {
    expect_dtype(t, want);
    expect_contiguous(t);
}
inline void expect_output(const Tensor& t, DType want) {
    expect_input(t, want);
    expect_writable(t);
}

// Exactly `n` elements (e.g. per-row statistics of an [..., C] input: `what` says so).
inline void expect_numel(const Tensor& t, int64_t n, const char* what) {
    if (t.numel() != n)
        throw ValueError(str(t.name, ": expected ", n, " elements (", what, "), got shape ",
                             t.shape_str()));
}

// All tensors of one launch live on the same side (host or device).
inline void expect_same_device(std::initializer_list<const Tensor*> ts) {
    const Tensor* first = *ts.begin();
    for (const Tensor* t : ts)
        if (t->on_device != first->on_device)
            throw TypeError(str(t->name, ": is in ", t->on_device ? "device" : "host",
                                " memory but ", first->name, " is in ",
                                first->on_device ? "device" : "host", " memory"));
}

// Values that index a grid must fit the kernel's int arithmetic.
inline int to_int(int64_t v, const char* what) {
    if (v < 0 || v > INT32_MAX) throw ValueError(str(what, ": ", v, " does not fit a 32-bit int"));
    return static_cast<int>(v);
}

}  // namespace scratch
