// core/half.h — 16-bit floating-point storage for kernels: __nv_bfloat16 and __half, their
// conversion intrinsics, and scratch::Storage<T>, the traits that let one kernel source serve
// float, __nv_bfloat16 and __half (DESIGN.md, "Precision": one source per op, never a copy per type).
//
// Under nvcc this is <cuda_bf16.h> and <cuda_fp16.h>. On the host executor it defines the same
// names with the same results, bit for bit:
//
//   __nv_bfloat16, __half              2-byte storage (trivially copyable; no arithmetic, no implicit
//                                      conversions: stricter than CUDA's, so what compiles here
//                                      compiles under nvcc — compute in float, convert explicitly)
//   __nv_bfloat162, __half2            two of them, members .x (low 16 bits) and .y (high 16 bits)
//   __float2bfloat16(f), __float2bfloat16_rn(f), __float2half(f), __float2half_rn(f)
//                                      round to nearest, ties to even; overflow gives ±inf; values
//                                      below half the smallest subnormal give ±0; fp16 subnormals
//                                      are produced, not flushed; any NaN gives 0x7fff, CUDA's
//                                      canonical NaN (cuda_bf16.hpp / cuda_fp16.hpp do the same)
//   __bfloat162float(h), __half2float(h)   exact (every bf16 / fp16 value is a float); a fp16 NaN
//                                      gives a quiet float NaN (0x7fffffff, as cuda_fp16.hpp),
//                                      a bf16 NaN keeps its bits (h << 16)
//   __floats2bfloat162_rn(lo, hi), __float22bfloat162_rn(float2), __float2bfloat162_rn(f),
//   __bfloat1622float2(h2), __floats2half2_rn(lo, hi), __float22half2_rn(float2),
//   __float2half2_rn(f), __half22float2(h2), __low2float(h2), __high2float(h2),
//   __halves2bfloat162(lo, hi), __halves2half2(lo, hi), __low2bfloat16 / __high2bfloat16,
//   __low2half / __high2half
//   __bfloat16_as_ushort(h), __ushort_as_bfloat16(u), __half_as_ushort(h), __ushort_as_half(u)
//                                      the raw bits (the only way at the storage on the host)
//
// scratch::Storage<T> (T = float, __nv_bfloat16, __half):
//   Storage<T>::to_float(v), Storage<T>::from_float(f)   (round to nearest even), also as the free
//   functions scratch::to_float(v) and scratch::from_float<T>(f);
//   Storage<T>::dtype: the DType its arrays cross the Python binding as — float32, float16, and
//   uint16 for bfloat16 (NumPy has no bfloat16; ml_dtypes' arrays report the ambiguous typestr
//   '<V2', so bf16 data travels as a uint16 view: `x.view(np.uint16)`);
//   Storage<T>::name ("float32", "bfloat16", "float16").
// scratch::pack2<T>(lo, hi) rounds two floats to T and packs them into one 32-bit register, lo in
// the low 16 bits — the form mma fragments hold (core/mma.h); scratch::unpack2<T>(bits) undoes it.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "platform.h"
#include "tensor.h"

#if defined(SCRATCH_CUDA)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#else

// ---------------------------------------------------------------------------------- host types
// The storage is private: kernels reach the bits through __bfloat16_as_ushort / __half_as_ushort,
// as they must under nvcc (where the member is not public either).
struct alignas(2) __nv_bfloat16 {
    __nv_bfloat16() = default;

private:
    unsigned short bits_;
    friend unsigned short __bfloat16_as_ushort(__nv_bfloat16 h);
    friend __nv_bfloat16 __ushort_as_bfloat16(unsigned short u);
};
struct alignas(2) __half {
    __half() = default;

private:
    unsigned short bits_;
    friend unsigned short __half_as_ushort(__half h);
    friend __half __ushort_as_half(unsigned short u);
};
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
    __nv_bfloat162() = default;
    __nv_bfloat162(__nv_bfloat16 lo, __nv_bfloat16 hi) : x(lo), y(hi) {}
};
struct alignas(4) __half2 {
    __half x, y;
    __half2() = default;
    __half2(__half lo, __half hi) : x(lo), y(hi) {}
};
static_assert(sizeof(__nv_bfloat16) == 2 && sizeof(__half) == 2, "16-bit storage");
static_assert(sizeof(__nv_bfloat162) == 4 && sizeof(__half2) == 4, "two 16-bit values in 32 bits");
static_assert(std::is_trivially_copyable_v<__nv_bfloat16> && std::is_trivially_copyable_v<__half2>,
              "storage types are copied as bytes");

inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits_; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
    __nv_bfloat16 h;
    h.bits_ = u;
    return h;
}
inline unsigned short __half_as_ushort(__half h) { return h.bits_; }
inline __half __ushort_as_half(unsigned short u) {
    __half h;
    h.bits_ = u;
    return h;
}

namespace scratch::host_half {

inline uint32_t float_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
inline float bits_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

// float -> bfloat16 (8 exponent bits like float, 7 mantissa bits): keep the top 16 bits, rounded
// to nearest even on the 16 dropped ones. Adding 0x7fff plus the kept part's lowest bit carries
// into the kept bits exactly when the dropped part is above half, or exactly half with an odd kept
// part. The carry may ripple into the exponent (the next binade, or inf from the largest finite
// values: the IEEE overflow result). NaN would turn into inf or change sign that way: it gives
// CUDA's canonical NaN instead.
inline unsigned short float_to_bf16_rn(float f) {
    const uint32_t x = float_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    return static_cast<unsigned short>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// float -> IEEE binary16 (5 exponent bits, bias 15, 10 mantissa bits), round to nearest even.
inline unsigned short float_to_f16_rn(float f) {
    const uint32_t x = float_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t u = x & 0x7fffffffu;
    if (u > 0x7f800000u) return 0x7fffu;                       // NaN: CUDA's canonical NaN
    if (u >= 0x477ff000u) return static_cast<unsigned short>(sign | 0x7c00u);   // >= 65520: inf
    if (u >= 0x38800000u) {                                    // >= 2^-14: a normal fp16
        // rebias the exponent (127 -> 15: subtract 112 << 23), drop 13 mantissa bits, round;
        // a carry out of the mantissa moves into the exponent, as it should
        const uint32_t v = u - 0x38000000u;
        uint32_t r = v >> 13;
        const uint32_t rest = v & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (r & 1u))) ++r;
        return static_cast<unsigned short>(sign | r);
    }
    if (u <= 0x33000000u) return static_cast<unsigned short>(sign);   // <= 2^-25 (a tie: to 0)
    // a subnormal fp16: the value in units of 2^-24 is m * 2^(e - 150) / 2^-24 = m >> (126 - e),
    // with m the float's 24-bit significand and e its biased exponent (102 .. 112 here)
    const uint32_t e = u >> 23;
    const uint32_t m = (u & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;                           // 14 .. 24
    uint32_t r = m >> shift;
    const uint32_t rest = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rest > half || (rest == half && (r & 1u))) ++r;        // may round up to 2^-14 (0x0400)
    return static_cast<unsigned short>(sign | r);
}

inline float bf16_to_float(unsigned short h) { return bits_float(uint32_t(h) << 16); }

inline float f16_to_float(unsigned short h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    if (exponent == 0x1fu)                                     // inf, or NaN (made quiet, as CUDA)
        return mantissa ? bits_float(0x7fffffffu) : bits_float(sign | 0x7f800000u);
    if (exponent == 0) {                                       // ±0 and subnormals: mantissa * 2^-24
        const float magnitude = float(mantissa) * 0x1p-24f;    // exact: at most 10 bits
        return sign ? -magnitude : magnitude;
    }
    return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

}  // namespace scratch::host_half

// ----------------------------------------------------------------------- conversion intrinsics
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    return __ushort_as_bfloat16(scratch::host_half::float_to_bf16_rn(f));
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 h) {
    return scratch::host_half::bf16_to_float(__bfloat16_as_ushort(h));
}
inline __half __float2half_rn(float f) { return __ushort_as_half(scratch::host_half::float_to_f16_rn(f)); }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __half2float(__half h) { return scratch::host_half::f16_to_float(__half_as_ushort(h)); }

inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 lo, __nv_bfloat16 hi) { return {lo, hi}; }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 h) { return h.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 h) { return h.y; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return __floats2bfloat162_rn(f.x, f.y); }
inline __nv_bfloat162 __float2bfloat162_rn(float f) { return __floats2bfloat162_rn(f, f); }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return {__bfloat162float(h.x), __bfloat162float(h.y)}; }
inline float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
inline float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }

inline __half2 __halves2half2(__half lo, __half hi) { return {lo, hi}; }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline __half2 __floats2half2_rn(float lo, float hi) { return {__float2half_rn(lo), __float2half_rn(hi)}; }
inline __half2 __float22half2_rn(float2 f) { return __floats2half2_rn(f.x, f.y); }
inline __half2 __float2half2_rn(float f) { return __floats2half2_rn(f, f); }
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }

#endif  // host executor

namespace scratch {

// ---------------------------------------------------------------------------- storage traits
template <typename T>
struct Storage;

template <>
struct Storage<float> {
    static constexpr DType dtype = DType::F32;
    static constexpr const char* name = "float32";
    __host__ __device__ static __forceinline__ float to_float(float v) { return v; }
    __host__ __device__ static __forceinline__ float from_float(float f) { return f; }
};
template <>
struct Storage<__nv_bfloat16> {
    static constexpr DType dtype = DType::U16;   // bf16 bits as a uint16 view (see above)
    static constexpr const char* name = "bfloat16";
    __host__ __device__ static __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
    __host__ __device__ static __forceinline__ __nv_bfloat16 from_float(float f) { return __float2bfloat16_rn(f); }
};
template <>
struct Storage<__half> {
    static constexpr DType dtype = DType::F16;
    static constexpr const char* name = "float16";
    __host__ __device__ static __forceinline__ float to_float(__half v) { return __half2float(v); }
    __host__ __device__ static __forceinline__ __half from_float(float f) { return __float2half_rn(f); }
};

template <typename T>
__host__ __device__ __forceinline__ float to_float(T v) { return Storage<T>::to_float(v); }
template <typename T>
__host__ __device__ __forceinline__ T from_float(float f) { return Storage<T>::from_float(f); }

template <typename T>
inline constexpr bool is_16bit_float = std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>;

// Two floats rounded to T (bf16 or fp16), packed into one 32-bit register: `lo` in bits 0..15.
template <typename T>
__host__ __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    static_assert(is_16bit_float<T>, "pack2<T>: T is __nv_bfloat16 or __half");
    uint32_t bits;
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
        const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        memcpy(&bits, &v, sizeof bits);
    } else {
        const __half2 v = __floats2half2_rn(lo, hi);
        memcpy(&bits, &v, sizeof bits);
    }
    return bits;
}

// The two values of a packed register as floats: .x from bits 0..15, .y from bits 16..31.
template <typename T>
__host__ __device__ __forceinline__ float2 unpack2(uint32_t bits) {
    static_assert(is_16bit_float<T>, "unpack2<T>: T is __nv_bfloat16 or __half");
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
        __nv_bfloat162 v;
        memcpy(&v, &bits, sizeof bits);
        return __bfloat1622float2(v);
    } else {
        __half2 v;
        memcpy(&v, &bits, sizeof bits);
        return __half22float2(v);
    }
}

}  // namespace scratch
