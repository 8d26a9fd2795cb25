// core/errors.h — the exceptions every launcher throws; bindings.cpp maps them to Python.
//
//   scratch::ValueError  -> ValueError   (bad shape, stride, size: the argument is named)
//   scratch::TypeError   -> TypeError    (bad dtype, wrong kind of array)
//   scratch::Error       -> RuntimeError (a CUDA error or an executor error, naming the kernel)
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace scratch {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct ValueError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};
struct TypeError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// Concatenate anything streamable: str("x: expected ", n, " dims").
template <typename... Parts>
inline std::string str(Parts&&... parts) {
    std::ostringstream os;
    (os << ... << std::forward<Parts>(parts));
    return os.str();
}

}  // namespace scratch

#if defined(__CUDACC__)
#include <cuda_runtime.h>
namespace scratch {
// Throw scratch::Error for a failed CUDA call, naming what was being done (usually the kernel).
inline void check_cuda(cudaError_t status, const char* what, const char* file, int line) {
    if (status != cudaSuccess)
        throw Error(str(what, ": ", cudaGetErrorName(status), " (", cudaGetErrorString(status),
                        ") at ", file, ":", line));
}
}  // namespace scratch
#define SCRATCH_CUDA_CHECK(expr, what) ::scratch::check_cuda((expr), (what), __FILE__, __LINE__)
#endif
