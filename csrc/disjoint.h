// csrc/disjoint.h — outputs that must not share memory with other arguments.
//
// A kernel that reads one array while writing another assumes they do not overlap; an aliased
// output would silently corrupt the result (or, in place, read values already updated).
#pragma once

#include <cstdint>
#include <initializer_list>

#include "core/tensor.h"

namespace scratch::kernels {

inline bool overlaps(const Tensor& a, const Tensor& b) {
    const auto lo_a = reinterpret_cast<uintptr_t>(a.data), lo_b = reinterpret_cast<uintptr_t>(b.data);
    const uintptr_t hi_a = lo_a + uintptr_t(a.numel()) * dtype_size(a.dtype);
    const uintptr_t hi_b = lo_b + uintptr_t(b.numel()) * dtype_size(b.dtype);
    return a.numel() > 0 && b.numel() > 0 && lo_a < hi_b && lo_b < hi_a;
}

// `out` (written by the kernel) shares no memory with any of `others`.
inline void expect_disjoint(const Tensor& out, std::initializer_list<const Tensor*> others) {
    for (const Tensor* t : others)
        if (overlaps(out, *t))
            throw ValueError(str(out.name, ": shares memory with ", t->name,
                                 " (the kernel needs separate arrays)"));
}

}  // namespace scratch::kernels
