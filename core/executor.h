// core/executor.h — the host executor: runs CUDA kernels on the CPU, for the `_host` module.
//
// A kernel source (csrc/*.cu) is compiled by the host C++ compiler with this header standing in
// for the CUDA runtime. The execution model is the GPU's, kept faithfully enough that a kernel
// which is wrong on the GPU is wrong here too, and says so instead of hanging:
//
//   - every thread of a block is a fiber: a small stack of its own, switched cooperatively on
//     one OS thread. A fiber runs until it reaches a barrier, a warp operation or its end; then
//     the next runnable fiber of the block runs. Because the whole block lives on one OS thread,
//     `__shared__` is a block-scope `thread_local` (one copy per worker = per block in flight)
//     and `__syncthreads()` is a real barrier;
//   - warps are lanes 32w..32w+31 of the linear thread index (x fastest, as on the GPU). A warp
//     operation (`__shfl_*_sync`, `__ballot_sync`, `__any_sync`, `__all_sync`, `__syncwarp`) is
//     a rendezvous of exactly the lanes in its mask: the last lane to arrive computes every
//     participant's result; lanes outside the mask never take part;
//   - blocks are spread over a small pool of OS threads (the caller plus N-1 workers, N = the
//     cores, at most 8; SCRATCH_HOST_THREADS overrides), each block run start to end by one;
//   - the order in which a block's fibers run between barriers and warp operations is chosen
//     per launch by SCRATCH_HOST_SCHEDULE (forward | reverse | random:SEED, see schedule());
//     a correct kernel gives the same result under every order, a racy one usually does not;
//   - SCRATCH_HOST_POISON=1 fills shared memory (static and dynamic) with a NaN pattern at the
//     start of every block, so a read of shared memory no thread of the block wrote shows up;
//   - `__activemask()` is a rendezvous of the lanes that reach the same call site (see
//     active_mask()): inside a divergent branch it returns the branch's lanes, as on the GPU;
//   - misuse raises instead of hanging: a `__syncthreads` not reached by every thread of the
//     block (or reached at different places), a warp operation whose mask names a lane that
//     exits or never arrives, masks that disagree, a misaligned vector load. The error names
//     the kernel, the block and the thread; the launch raises scratch::Error (RuntimeError).
//
// Fibers switch with a few instructions (x86-64; other CPUs use ucontext), their stacks are
// mapped once per worker with a guard page and reused by every block, so a launch allocates
// nothing per thread. Under AddressSanitizer every switch is announced to ASan so that it
// follows the fiber stacks.
#pragma once

#if defined(__CUDACC__)
#error "core/executor.h is the host build's stand-in for the CUDA runtime; nvcc uses the real one"
#endif

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "errors.h"

#if defined(__SANITIZE_ADDRESS__)
#define SCRATCH_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SCRATCH_ASAN 1
#endif
#endif
#if defined(SCRATCH_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#define SCRATCH_HOST_EXECUTOR 1
#define SCRATCH_STRINGIFY_(x) #x
#define SCRATCH_STRINGIFY(x) SCRATCH_STRINGIFY_(x)

// ---------------------------------------------------------------- the CUDA vocabulary, on the host
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Static shared memory is declared with SCRATCH_SHARED(type, name, dims) (core/vec.h): a
// block-scope thread_local (one instance per OS thread: exactly one block's shared memory, since
// a worker runs one block at a time and all of its threads) that is re-poisoned at the first
// execution of its declaration in each block under SCRATCH_HOST_POISON=1. A bare `__shared__`
// could not be poisoned (the macro never sees the variable's name), so it does not compile here.
#define __shared__ \
    static_assert(false, "declare static shared memory with SCRATCH_SHARED(type, name, [dims]) (core/vec.h)");

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 { unsigned x, y, z; };
inline std::ostream& operator<<(std::ostream& os, const uint3& t) {
    return os << "(" << t.x << "," << t.y << "," << t.z << ")";
}
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

// Streams are accepted and ignored: the host runs each launch to completion, in order.
typedef struct scratch_host_stream* cudaStream_t;
constexpr int warpSize = 32;

namespace scratch::host {

// ------------------------------------------------------------------------------ context switch
#if defined(__x86_64__)
// scratch_fiber_switch(save, load): push the callee-saved registers, store the stack pointer in
// *save, load `load` as the stack pointer, pop, return into the other context. A naked inline
// function: one copy per module however many translation units include this header (LTO too).
extern "C" __attribute__((naked, noinline)) inline void scratch_fiber_switch(void** /*save_sp*/, void* /*load_sp*/) {
    asm volatile(
        "pushq %rbp\n\t"
        "pushq %rbx\n\t"
        "pushq %r12\n\t"
        "pushq %r13\n\t"
        "pushq %r14\n\t"
        "pushq %r15\n\t"
        "movq %rsp, (%rdi)\n\t"
        "movq %rsi, %rsp\n\t"
        "popq %r15\n\t"
        "popq %r14\n\t"
        "popq %r13\n\t"
        "popq %r12\n\t"
        "popq %rbx\n\t"
        "popq %rbp\n\t"
        "ret\n\t");
}

struct Context {
    void* sp = nullptr;
};
inline void context_switch(Context& from, Context& to) { scratch_fiber_switch(&from.sp, to.sp); }
// A fresh context whose first switch-in "returns" into entry(), with the stack aligned as if
// entry had been called.
inline void context_make(Context& c, char* stack, size_t bytes, void (*entry)()) {
    auto* top = reinterpret_cast<uintptr_t*>((reinterpret_cast<uintptr_t>(stack + bytes)) & ~uintptr_t(15));
    *--top = 0;                                     // entry's (never used) return address
    *--top = reinterpret_cast<uintptr_t>(entry);    // popped by `ret`
    for (int i = 0; i < 6; ++i) *--top = 0;         // rbp rbx r12 r13 r14 r15
    c.sp = top;
}
#else
struct Context {
    ucontext_t uc;
};
inline void context_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
inline void context_make(Context& c, char* stack, size_t bytes, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#endif

// ------------------------------------------------------------------------------------- state
enum class State : uint8_t { Runnable, AtBarrier, AtWarp, AtActiveMask, Done };
enum class WarpOp : uint8_t { ShflIdx, ShflUp, ShflDown, ShflXor, Ballot, Any, All, SyncWarp };

inline const char* warp_op_name(WarpOp op) {
    switch (op) {
        case WarpOp::ShflIdx: return "__shfl_sync";
        case WarpOp::ShflUp: return "__shfl_up_sync";
        case WarpOp::ShflDown: return "__shfl_down_sync";
        case WarpOp::ShflXor: return "__shfl_xor_sync";
        case WarpOp::Ballot: return "__ballot_sync";
        case WarpOp::Any: return "__any_sync";
        case WarpOp::All: return "__all_sync";
        case WarpOp::SyncWarp: return "__syncwarp";
    }
    return "?";
}

struct Fiber {
    Context ctx;
    char* stack = nullptr;          // usable stack (above the guard page)
    size_t stack_bytes = 0;
    uint3 thread_idx{};
    State state = State::Runnable;
    // the warp operation this lane waits at
    WarpOp op = WarpOp::SyncWarp;
    unsigned mask = 0;
    int param = 0;
    int width = 32;
    uint64_t value = 0;
    uint64_t result = 0;
    const char* site = nullptr;     // the __activemask() call site this lane waits at
    int order_pos = 0;              // its position in the segment's order (random schedule)
    void* asan_fake_stack = nullptr;
};

// The order in which the runnable fibers of a block take turns (SCRATCH_HOST_SCHEDULE).
enum class Schedule : uint8_t { Forward, Reverse, Random };

// What the environment asks of a launch: read once per launch, by the launching thread, so a
// process (a test) may change SCRATCH_HOST_SCHEDULE / SCRATCH_HOST_POISON between launches.
struct LaunchOptions {
    Schedule schedule = Schedule::Forward;
    uint64_t seed = 0;              // random:SEED
    bool poison = false;            // fill shared memory with kPoisonWord at every block start
};

// Poison: every 16-bit half is 0x7fff. A NaN as float32, float64, bf16 and fp16; as an int32
// 2147450879 (never 0 or -1, the usual sentinels; as an index it lands far out of bounds).
constexpr uint32_t kPoisonWord = 0x7fff7fffu;

inline void poison_fill(void* p, size_t bytes) {
    auto* b = static_cast<unsigned char*>(p);
    for (size_t i = 0; i < bytes; ++i) b[i] = (i & 1) ? 0x7f : 0xff;   // little-endian 0x7fff
}

inline LaunchOptions launch_options() {
    LaunchOptions o;
    const char* sched = std::getenv("SCRATCH_HOST_SCHEDULE");
    if (sched && *sched) {
        const std::string v = sched;
        if (v == "forward") {
            o.schedule = Schedule::Forward;
        } else if (v == "reverse") {
            o.schedule = Schedule::Reverse;
        } else if (v.rfind("random:", 0) == 0 && v.size() > 7 &&
                   v.find_first_not_of("0123456789", 7) == std::string::npos && v.size() <= 7 + 19) {
            o.schedule = Schedule::Random;
            o.seed = std::strtoull(v.c_str() + 7, nullptr, 10);
        } else {
            throw Error(str("SCRATCH_HOST_SCHEDULE=", v, ": expected forward, reverse or random:SEED "
                            "(SEED a decimal integer)"));
        }
    }
    const char* poison = std::getenv("SCRATCH_HOST_POISON");
    if (poison && *poison) {
        const std::string v = poison;
        if (v != "0" && v != "1") throw Error(str("SCRATCH_HOST_POISON=", v, ": expected 0 or 1"));
        o.poison = v == "1";
    }
    return o;
}

// splitmix64: the random schedule's generator (a seed per block and segment: deterministic
// whichever OS thread runs the block).
inline uint64_t splitmix64(uint64_t& state) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// One launch, as every worker sees it.
struct Launch {
    const char* kernel = "";
    dim3 grid, block;
    size_t dynamic_smem = 0;
    int threads = 0;                // per block
    void (*entry)(const void* args) = nullptr;
    const void* args = nullptr;
    LaunchOptions options;
};

inline size_t env_size(const char* name, size_t fallback) {
    const char* v = std::getenv(name);
    if (!v || !*v) return fallback;
    long long n = std::atoll(v);
    return n > 0 ? static_cast<size_t>(n) : fallback;
}

inline size_t fiber_stack_bytes() {
#if defined(SCRATCH_ASAN)
    size_t kb = 256;   // ASan's redzones make frames larger
#else
    size_t kb = 64;
#endif
    static const size_t bytes = env_size("SCRATCH_HOST_STACK_KB", kb) * 1024;
    return bytes;
}

class Worker;
// The fiber and the worker running on this OS thread. Inline functions with static locals are
// one object across all translation units of the module. Both live in one thread_local, so a
// function that reads threadIdx, blockIdx and blockDim looks the thread's storage up once
// (each thread_local of a dlopen'ed module is a __tls_get_addr call).
struct ThreadState {
    Fiber* fiber = nullptr;
    Worker* worker = nullptr;
};
inline ThreadState& thread_state() {
    static thread_local ThreadState state;
    return state;
}
inline Fiber*& current_fiber() { return thread_state().fiber; }
inline Worker*& current_worker() { return thread_state().worker; }

// A worker runs blocks, one at a time, each as `threads` fibers on this OS thread.
class Worker {
public:
    uint3 block_idx{};
    const Launch* launch = nullptr;
    bool failed = false;
    std::string error;
    uint64_t block_serial = 0;      // counts the blocks this worker ran (static shared memory's epoch)

    Worker() = default;
    Worker(const Worker&) = delete;
    ~Worker() {
        for (Fiber& f : fibers_) munmap(f.stack - page_bytes(), f.stack_bytes + page_bytes());
        std::free(dynamic_smem_);
    }

    // Per launch: the dynamic shared memory, sized exactly (so ASan sees an overrun).
    void begin_launch(const Launch& L) {
        launch = &L;
        failed = false;
        error.clear();
        schedule_ = L.options.schedule;
        if (L.dynamic_smem != dynamic_smem_bytes_) {
            std::free(dynamic_smem_);
            dynamic_smem_ = L.dynamic_smem ? std::aligned_alloc(128, round_up(L.dynamic_smem, 128)) : nullptr;
            dynamic_smem_bytes_ = L.dynamic_smem;
        }
    }
    void* dynamic_smem() const { return dynamic_smem_; }

    // Run one block to completion (or to its first error, left in `error`).
    void run_block(uint3 bidx) {
        const Launch& L = *launch;
        const int n = L.threads;
        grow(n);
        warps_.assign((n + 31) / 32, WarpState{});
        block_idx = bidx;
        n_ = n;
        live_ = n;
        runnable_ = n;
        barrier_arrived_ = 0;
        barrier_site_ = nullptr;
        ++block_serial;
        segment_ = 0;
        block_linear_ = bidx.x + uint64_t(L.grid.x) * (bidx.y + uint64_t(L.grid.y) * bidx.z);
        if (L.options.poison && dynamic_smem_) poison_fill(dynamic_smem_, dynamic_smem_bytes_);
#if defined(SCRATCH_ASAN)
        // A finished fiber never returns from fiber_main, so the redzones of its last frames stay
        // poisoned at the top of its stack (after an error, anywhere in it): clear them before
        // the stack is reused, or ASan reports the next block's frames.
        for (int i = 0; i < (stacks_dirty_ ? (int)fibers_.size() : n); ++i) {
            const Fiber& f = fibers_[i];
            const size_t top = std::min(f.stack_bytes, kStackColour * kStackColours + 16384);
            const size_t bytes = stacks_dirty_ ? f.stack_bytes : top;
            __asan_unpoison_memory_region(f.stack + f.stack_bytes - bytes, bytes);
        }
        stacks_dirty_ = false;
#endif
        const unsigned bx = L.block.x, by = L.block.y;
        for (int i = 0; i < n; ++i) {
            Fiber& f = fibers_[i];
            f.state = State::Runnable;
            f.thread_idx = {i % bx, (i / bx) % by, i / (bx * by)};
            f.asan_fake_stack = nullptr;
            // Colour the stack tops: at a power-of-two stride every fiber's hot frames would
            // fall in the same cache sets and evict each other at every switch.
            context_make(f.ctx, f.stack, f.stack_bytes - kStackColour * (i % kStackColours),
                         &Worker::fiber_main);
        }
        const int first = first_of_segment();
        current_ = first;
        current_fiber() = &fibers_[first];
        jump(main_, &main_fake_stack_, fibers_[first]);
        current_fiber() = nullptr;
    }

    // ---------------------------------------------------------------- called from fibers
    void syncthreads(const char* site) {
        Fiber& self = fibers_[current_];
        if (live_ < n_)
            failf("__syncthreads() at ", site, " reached by thread ", self.thread_idx, " after ",
                  n_ - live_, " thread(s) of the block exited: every thread of the block must "
                  "reach each barrier");
        if (barrier_arrived_ == 0) {
            barrier_site_ = site;
        } else if (std::strcmp(site, barrier_site_) != 0) {
            failf("divergent __syncthreads(): thread ", self.thread_idx, " reached the barrier at ",
                  site, " while ", barrier_arrived_, " thread(s) wait at the one at ",
                  barrier_site_);
        }
        if (++barrier_arrived_ == n_) {      // the last to arrive releases the block
            barrier_arrived_ = 0;
            for (int i = 0; i < n_; ++i)
                if (fibers_[i].state == State::AtBarrier) fibers_[i].state = State::Runnable;
            runnable_ = n_;
            ++segment_;
            // forward: the last to arrive runs on (as it always has); reverse and random start
            // the new segment from the first fiber of their order
            if (schedule_ != Schedule::Forward) switch_to(first_of_segment());
            return;
        }
        self.state = State::AtBarrier;
        --runnable_;
        schedule();
    }

    uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int param, int width) {
        Fiber& self = fibers_[current_];
        const int lane = current_ & 31, base = current_ - lane;
        const int lanes = std::min(32, n_ - base);
        const unsigned existing = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
        if (!((mask >> lane) & 1u))
            failf(warp_op_name(op), " called by lane ", lane, " of thread ", self.thread_idx,
                  " with mask ", Hex{mask}, ", which does not include the calling lane");
        if (mask & ~existing)
            failf(warp_op_name(op), " mask ", Hex{mask}, " names lanes that do not exist: ",
                  "this warp has ", lanes, " lane(s) (", n_, " threads per block)");
        if (width <= 0 || width > 32 || (width & (width - 1)))
            failf(warp_op_name(op), ": width must be a power of two <= 32, got ", width);
        self.op = op;
        self.mask = mask;
        self.value = value;
        self.param = param;
        self.width = width;
        self.state = State::AtWarp;
        WarpState& warp = warps_[base >> 5];
        if (mask & warp.exited) {
            const int l = __builtin_ctz(mask & warp.exited);
            failf(warp_op_name(op), " with mask ", Hex{mask}, " by thread ", self.thread_idx,
                  ": lane ", l, " of the mask already exited");
        }
        warp.arrived |= 1u << lane;
        if ((warp.arrived & mask) != mask) {   // someone is missing: wait for them
            --runnable_;
            schedule();
            return self.result;
        }
        complete_warp_op(base, mask, op);
        return self.result;
    }

    // __activemask() at `site` (file:line). On the GPU it returns the lanes of the warp that are
    // converged at this point of the code: inside a divergent branch, the branch's lanes only.
    // Fibers run one at a time, so "executing the same code point together" is modelled as a
    // rendezvous: the lane waits at `site` until no lane of its warp is runnable (each other
    // live lane has reached this site, another __activemask site, a barrier or a warp
    // operation, or has exited); then every lane waiting at this site gets the set of lanes
    // waiting there, and lanes waiting at another site get theirs. Lanes that exited are never
    // active; lanes that wait at a barrier or a warp operation elsewhere are not converged here.
    // The site is the macro's __FILE__:__LINE__, so a helper function containing __activemask()
    // that is called from both sides of a branch counts as one site (the lanes of both sides
    // are reported together, as if the helper had reconverged them).
    unsigned active_mask(const char* site) {
        Fiber& self = fibers_[current_];
        const int lane = current_ & 31, base = current_ - lane;
        self.site = site;
        self.state = State::AtActiveMask;
        warps_[base >> 5].at_mask |= 1u << lane;
        --runnable_;
        schedule();
        return unsigned(self.result);
    }

    // Abandon the block: its fibers are never resumed (their stacks are reused by the next one).
    [[noreturn]] void fail(std::string message) {
        error = str("block (", block_idx.x, ",", block_idx.y, ",", block_idx.z, "): ", message);
        std::string().swap(message);   // this frame is never unwound: free the text now
        failed = true;
        stacks_dirty_ = true;
        abandon_to_main();
    }

private:
    struct WarpState {
        unsigned arrived = 0;   // lanes waiting at a warp operation
        unsigned exited = 0;    // lanes whose thread has returned
        unsigned at_mask = 0;   // lanes waiting at an __activemask() site
    };
    std::vector<Fiber> fibers_;
    std::vector<WarpState> warps_;
    std::vector<int> order_;        // random schedule: the segment's order of fibers
    Context main_;
    void* main_fake_stack_ = nullptr;
    int n_ = 0, live_ = 0, runnable_ = 0, current_ = 0, barrier_arrived_ = 0;
    int segment_ = 0;               // barriers passed by this block
    uint64_t block_linear_ = 0;
    Schedule schedule_ = Schedule::Forward;
    const char* barrier_site_ = nullptr;
    bool stacks_dirty_ = false;
    void* dynamic_smem_ = nullptr;
    size_t dynamic_smem_bytes_ = 0;

    static size_t page_bytes() { return 4096; }
    static size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }
    struct Hex {   // a lane mask, printed as 0x0000ffff
        unsigned v;
        friend std::ostream& operator<<(std::ostream& os, Hex h) {
            char buf[16];
            std::snprintf(buf, sizeof buf, "0x%08x", h.v);
            return os << buf;
        }
    };
    // The message is built here, out of line, so that the hot paths that may fail keep small frames.
    template <typename... Parts>
    [[noreturn]] __attribute__((noinline, cold)) void failf(const Parts&... parts) {
        fail(str(parts...));
    }

    // Stacks are mapped once, with a guard page below each, and kept for every later block.
    static constexpr size_t kStackColour = 64 + 16;   // a cache line and a bit: spreads sets
    static constexpr size_t kStackColours = 192;     // up to 15 KiB of offset

    void grow(int n) {
        const size_t bytes = fiber_stack_bytes() + kStackColour * kStackColours;
        while ((int)fibers_.size() < n) {
            void* p = mmap(nullptr, bytes + page_bytes(), PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (p == MAP_FAILED) throw Error("host executor: cannot map a fiber stack");
            mprotect(p, page_bytes(), PROT_NONE);
            Fiber f;
            f.stack = static_cast<char*>(p) + page_bytes();
            f.stack_bytes = bytes;
            fibers_.push_back(f);
        }
    }

    // Switch from the running context to fiber `to`, telling ASan which stack comes next.
    // fake_stack == nullptr: the context being left is never resumed.
    static void jump(Context& from, void** fake_stack, Fiber& to) {
#if defined(SCRATCH_ASAN)
        __sanitizer_start_switch_fiber(fake_stack, to.stack, to.stack_bytes);
#endif
        context_switch(from, to.ctx);
#if defined(SCRATCH_ASAN)
        __sanitizer_finish_switch_fiber(fake_stack ? *fake_stack : nullptr, nullptr, nullptr);
#else
        (void)fake_stack;
#endif
    }

    [[noreturn]] void abandon_to_main() {
        Fiber& self = fibers_[current_];
#if defined(SCRATCH_ASAN)
        const void* bottom = nullptr;
        size_t size = 0;
        main_stack(&bottom, &size);
        __sanitizer_start_switch_fiber(nullptr, bottom, size);
#endif
        context_switch(self.ctx, main_);
        __builtin_unreachable();
    }

#if defined(SCRATCH_ASAN)
    static void main_stack(const void** bottom, size_t* size) {
        pthread_attr_t attr;
        void* addr = nullptr;
        pthread_getattr_np(pthread_self(), &attr);
        pthread_attr_getstack(&attr, &addr, size);
        pthread_attr_destroy(&attr);
        *bottom = addr;
    }
#endif

    static void fiber_main() {
#if defined(SCRATCH_ASAN)
        __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
        Worker& w = *current_worker();
        try {
            w.launch->entry(w.launch->args);
        } catch (const std::exception& e) {   // caught on this fiber's stack, never unwound past it
            const uint3 t = w.fibers_[w.current_].thread_idx;
            w.failf("thread ", t, " threw: ", e.what());
        }
        w.exit_current();
    }

    [[noreturn]] void exit_current() {
        Fiber& self = fibers_[current_];
        const int lane = current_ & 31, base = current_ - lane;
        if (barrier_arrived_ > 0)
            failf("thread ", self.thread_idx, " exited while ", barrier_arrived_,
                  " thread(s) wait at __syncthreads() at ", barrier_site_,
                  ": every thread of the block must reach each barrier");
        for (unsigned waiting = warps_[base >> 5].arrived; waiting; waiting &= waiting - 1) {
            const int l = __builtin_ctz(waiting);
            const Fiber& f = fibers_[base + l];
            if ((f.mask >> lane) & 1u)
                failf("lane ", lane, " (thread ", self.thread_idx, ") exited, but lane ", l,
                      " waits for it at ", warp_op_name(f.op), " with mask ", Hex{f.mask});
        }
        self.state = State::Done;
        warps_[base >> 5].exited |= 1u << lane;
        --live_;
        --runnable_;
        if (live_ == 0) abandon_to_main();   // the block is done
        schedule();
        __builtin_unreachable();
    }

    // The running fiber cannot continue: run the next runnable one, in the launch's order
    // (SCRATCH_HOST_SCHEDULE):
    //   forward  lanes of the same warp first, upwards from the current lane (its 32 stacks stay
    //            in L1 while the warp runs from one warp operation to the next), then the
    //            following warps in round-robin order; a block starts at thread 0, and the last
    //            thread to reach a barrier runs on past it;
    //   reverse  the mirror image: downwards within the warp, then the preceding warps; a block
    //            and every segment between barriers start at the highest thread;
    //   random   a pseudo-random permutation of the block's threads per segment between
    //            barriers, drawn from (SEED, block, segment), walked cyclically from the current
    //            fiber: the same order whichever OS thread runs the block, run after run.
    // A write by one thread and a read by another with no barrier between them gives a different
    // result under forward and reverse (whichever thread index is lower), so running the tests
    // under both reveals the race that one order alone hides.
    void schedule() {
        const int lane = current_ & 31, base = current_ - lane;
        if (warps_[base >> 5].at_mask) settle_active_mask(base);
        if (runnable_ == 0) fail(describe_deadlock());
        const int next = next_runnable(lane, base);
        Fiber& self = fibers_[current_];
        current_ = next;
        current_fiber() = &fibers_[next];
        if (&fibers_[next] == &self) return;
        jump(self.ctx, self.state == State::Done ? nullptr : &self.asan_fake_stack, fibers_[next]);
    }

    int next_runnable(int lane, int base) const {
        const int lanes = std::min(32, n_ - base);
        int next = -1;
        switch (schedule_) {
            case Schedule::Forward:
                for (int k = 1; k <= lanes; ++k) {
                    const int l = lane + k < lanes ? lane + k : lane + k - lanes;
                    if (fibers_[base + l].state == State::Runnable) return base + l;
                }
                next = base + lanes - 1;
                do {
                    next = next + 1 == n_ ? 0 : next + 1;
                } while (fibers_[next].state != State::Runnable);
                return next;
            case Schedule::Reverse:
                for (int k = 1; k <= lanes; ++k) {
                    const int l = lane - k >= 0 ? lane - k : lane - k + lanes;
                    if (fibers_[base + l].state == State::Runnable) return base + l;
                }
                next = base;
                do {
                    next = next == 0 ? n_ - 1 : next - 1;
                } while (fibers_[next].state != State::Runnable);
                return next;
            case Schedule::Random: {
                int p = fibers_[base + lane].order_pos;
                for (int k = 0; k < n_; ++k) {
                    p = p + 1 == n_ ? 0 : p + 1;
                    if (fibers_[order_[p]].state == State::Runnable) return order_[p];
                }
                break;
            }
        }
        return base + lane;   // unreachable: runnable_ > 0
    }

    // The first fiber of a segment (block start, barrier release); draws the random order.
    int first_of_segment() {
        switch (schedule_) {
            case Schedule::Forward: return 0;
            case Schedule::Reverse: return n_ - 1;
            case Schedule::Random: break;
        }
        uint64_t state = launch->options.seed;
        state = splitmix64(state) ^ block_linear_;
        state = splitmix64(state) ^ uint64_t(segment_);
        order_.resize(n_);
        for (int i = 0; i < n_; ++i) order_[i] = i;
        for (int i = n_ - 1; i > 0; --i) std::swap(order_[i], order_[splitmix64(state) % uint64_t(i + 1)]);
        for (int i = 0; i < n_; ++i) fibers_[order_[i]].order_pos = i;
        return order_[0];
    }

    // Run fiber `next` now; the current fiber stays runnable and resumes when its turn comes.
    void switch_to(int next) {
        if (next == current_) return;
        Fiber& self = fibers_[current_];
        current_ = next;
        current_fiber() = &fibers_[next];
        jump(self.ctx, &self.asan_fake_stack, fibers_[next]);
    }

    // No lane of this warp can run on: the lanes waiting at __activemask() sites learn who is
    // there with them (one set per site) and become runnable.
    void settle_active_mask(int base) {
        WarpState& warp = warps_[base >> 5];
        const int lanes = std::min(32, n_ - base);
        for (int l = 0; l < lanes; ++l)
            if (fibers_[base + l].state == State::Runnable) return;
        unsigned waiting = warp.at_mask;
        warp.at_mask = 0;
        while (waiting) {
            const char* site = fibers_[base + __builtin_ctz(waiting)].site;
            unsigned group = 0;
            for (unsigned w = waiting; w; w &= w - 1) {
                const int l = __builtin_ctz(w);
                if (std::strcmp(fibers_[base + l].site, site) == 0) group |= 1u << l;
            }
            for (unsigned g = group; g; g &= g - 1) {
                Fiber& f = fibers_[base + __builtin_ctz(g)];
                f.result = group;
                f.state = State::Runnable;
                ++runnable_;
            }
            waiting &= ~group;
        }
    }

    void complete_warp_op(int base, unsigned mask, WarpOp op) {
        for (int l = 0; l < 32; ++l) {   // every participant must be at the same operation
            if (!((mask >> l) & 1u)) continue;
            const Fiber& f = fibers_[base + l];
            if (f.mask != mask || f.op != op)
                failf("warp operations disagree: lane ", current_ & 31, " calls ",
                      warp_op_name(op), " with mask ", Hex{mask}, " while lane ", l,
                      " waits at ", warp_op_name(f.op), " with mask ", Hex{f.mask});
        }
        warps_[base >> 5].arrived &= ~mask;
        unsigned votes = 0;
        for (int l = 0; l < 32; ++l)
            if (((mask >> l) & 1u) && fibers_[base + l].value != 0) votes |= 1u << l;
        for (int l = 0; l < 32; ++l) {
            if (!((mask >> l) & 1u)) continue;
            Fiber& f = fibers_[base + l];
            const int w = f.width, segment = l & ~(w - 1);
            int src = l;
            switch (op) {
                case WarpOp::ShflIdx: src = segment + (f.param & (w - 1)); break;
                // as the hardware (PTX shfl.sync): only the delta's low 5 bits count
                case WarpOp::ShflUp: src = l - (f.param & 31) < segment ? l : l - (f.param & 31); break;
                case WarpOp::ShflDown: src = l + (f.param & 31) >= segment + w ? l : l + (f.param & 31); break;
                case WarpOp::ShflXor: src = (l ^ (f.param & 31)) >= segment + w ? l : (l ^ (f.param & 31)); break;
                default: break;
            }
            switch (op) {
                case WarpOp::Ballot: f.result = votes; break;
                case WarpOp::Any: f.result = votes != 0; break;
                case WarpOp::All: f.result = votes == mask; break;
                case WarpOp::SyncWarp: f.result = 0; break;
                default:
                    if (!((mask >> src) & 1u))
                        failf(warp_op_name(op), ": lane ", l, " reads lane ", src,
                              ", which is not in the mask ", Hex{mask});
                    f.result = fibers_[base + src].value;
            }
            if (f.state == State::AtWarp && base + l != current_) ++runnable_;
            f.state = State::Runnable;
        }
    }

    std::string describe_deadlock() const {
        int at_barrier = 0;
        std::string warps;
        for (int i = 0; i < n_; ++i) {
            const Fiber& f = fibers_[i];
            if (f.state == State::AtBarrier) ++at_barrier;
            if (f.state == State::AtWarp && warps.empty()) {
                const int base = i & ~31;
                unsigned missing = 0;
                for (int l = 0; l < 32; ++l)
                    if (((f.mask >> l) & 1u) && fibers_[base + l].state != State::AtWarp)
                        missing |= 1u << l;
                warps = str("; warp ", i / 32, " waits at ", warp_op_name(f.op), " with mask ",
                            Hex{f.mask}, " for lanes ", Hex{missing}, " that never arrive");
            }
        }
        return str("no thread can proceed (", live_, " of ", n_, " threads still running; ",
                   at_barrier, " wait at __syncthreads()",
                   at_barrier ? str(" at ", barrier_site_) : std::string(), warps, ")");
    }
};

// ------------------------------------------------------------------------------- thread pool
// Blocks are handed out by an atomic counter to the caller and the pool's threads.
class Pool {
public:
    // Never destroyed: at exit its threads just wait, and a forked child, which has the pool's
    // memory (condition variables with the parent's waiters) but not its threads, must not
    // tear it down.
    static Pool& instance() {
        static Pool* pool = new Pool();
        return *pool;
    }
    int threads() const { return getpid() == owner_pid_ ? (int)threads_.size() + 1 : 1; }

    void run(const Launch& L) {
        std::lock_guard<std::mutex> serial(launch_mutex_);
        const int64_t blocks = int64_t(L.grid.x) * L.grid.y * L.grid.z;
        if (blocks == 0) return;
        job_ = &L;
        blocks_ = blocks;
        next_block_.store(0);
        failed_.store(false);
        error_.clear();
        // A forked child has the pool's memory but not its threads: it runs every block itself.
        const bool forked = getpid() != owner_pid_;
        const int helpers = forked ? 0 : (int)std::min<int64_t>(threads_.size(), blocks - 1);
        {
            std::lock_guard<std::mutex> lock(m_);
            active_ = helpers;
            helpers_wanted_ = helpers;
            helpers_taken_ = 0;
            ++generation_;
        }
        if (helpers) cv_start_.notify_all();
        work();
        {
            std::unique_lock<std::mutex> lock(m_);
            cv_done_.wait(lock, [&] { return active_ == 0; });
        }
        job_ = nullptr;
        if (failed_.load()) throw Error(str("kernel ", L.kernel, ": ", error_));
    }

private:
    std::vector<std::thread> threads_;
    std::mutex m_, launch_mutex_, error_mutex_;
    std::condition_variable cv_start_, cv_done_;
    uint64_t generation_ = 0;
    int active_ = 0, helpers_wanted_ = 0, helpers_taken_ = 0;
    const Launch* job_ = nullptr;
    int64_t blocks_ = 0;
    std::atomic<int64_t> next_block_{0};
    std::atomic<bool> failed_{false};
    std::string error_;

    pid_t owner_pid_ = getpid();

    Pool() {
        const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
        const size_t n = env_size("SCRATCH_HOST_THREADS", std::min(cores, 8u));
        for (size_t i = 1; i < n; ++i) threads_.emplace_back([this] { loop(); });
    }
    static Worker& this_worker() {
        static thread_local Worker worker;
        current_worker() = &worker;
        return worker;
    }

    void work() {
        Worker& w = this_worker();
        const Launch& L = *job_;
        w.begin_launch(L);
        for (;;) {
            if (failed_.load(std::memory_order_relaxed)) break;
            const int64_t b = next_block_.fetch_add(1);
            if (b >= blocks_) break;
            const unsigned gx = L.grid.x, gy = L.grid.y;
            w.run_block({unsigned(b % gx), unsigned((b / gx) % gy), unsigned(b / (int64_t(gx) * gy))});
            if (w.failed) {
                std::lock_guard<std::mutex> lock(error_mutex_);
                if (!failed_.load()) error_ = w.error;
                failed_.store(true);
                break;
            }
        }
        w.launch = nullptr;
    }

    void loop() {
        uint64_t seen = 0;
        for (;;) {
            {
                std::unique_lock<std::mutex> lock(m_);
                cv_start_.wait(lock, [&] {
                    return generation_ != seen && helpers_taken_ < helpers_wanted_;
                });
                seen = generation_;
                ++helpers_taken_;
            }
            work();
            {
                std::lock_guard<std::mutex> lock(m_);
                if (--active_ == 0) cv_done_.notify_all();
            }
        }
    }
};

template <typename Kernel, typename Args>
struct Closure {
    Kernel kernel;
    Args args;
    static void invoke(const void* self) {
        const Closure& c = *static_cast<const Closure*>(self);
        std::apply(c.kernel, c.args);   // each thread gets its own copy of the arguments
    }
};

// Run kernel(args...) over the grid; returns when every block is done, raises scratch::Error.
template <typename... KArgs, typename... Args>
inline void run(const char* name, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                Args&&... args) {
    using C = Closure<void (*)(KArgs...), std::tuple<KArgs...>>;
    C closure{kernel, std::tuple<KArgs...>(std::forward<Args>(args)...)};
    Launch L;
    L.kernel = name;
    L.grid = grid;
    L.block = block;
    L.dynamic_smem = smem;
    L.threads = int(block.x * block.y * block.z);
    L.entry = &C::invoke;
    L.args = &closure;
    L.options = launch_options();
    Pool::instance().run(L);
}

inline Worker& worker() { return *current_worker(); }

template <typename T>
inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "warp operations exchange values of at most 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    return bits;
}
template <typename T>
inline T from_bits(uint64_t bits) {
    T v;
    std::memcpy(&v, &bits, sizeof(T));
    return v;
}

template <typename T>
inline T* dynamic_shared() { return static_cast<T*>(worker().dynamic_smem()); }

// SCRATCH_SHARED's hook, run by every thread each time it executes the declaration: the first
// execution in a block poisons the variable (under SCRATCH_HOST_POISON=1). No thread can touch a
// static shared variable before some thread of the block has executed its declaration, so this
// is the same as poisoning every static shared variable at block start.
inline void shared_declared(void* p, size_t bytes, uint64_t& epoch) {
    const Worker* w = current_worker();
    if (!w || epoch == w->block_serial) return;
    epoch = w->block_serial;
    if (w->launch->options.poison) poison_fill(p, bytes);
}

// Raise from inside a kernel: the launch fails with this message (kernel, block, thread named).
[[noreturn]] inline void device_fail(const std::string& message) {
    const uint3 t = current_fiber()->thread_idx;
    worker().fail(str("thread ", t, ": ", message));
}

}  // namespace scratch::host

// ------------------------------------------------------------------ built-in variables, barriers
#define threadIdx (::scratch::host::current_fiber()->thread_idx)
#define blockIdx (::scratch::host::current_worker()->block_idx)
#define blockDim (::scratch::host::current_worker()->launch->block)
#define gridDim (::scratch::host::current_worker()->launch->grid)
#define __syncthreads() ::scratch::host::worker().syncthreads(__FILE__ ":" SCRATCH_STRINGIFY(__LINE__))

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    ::scratch::host::worker().warp_op(::scratch::host::WarpOp::SyncWarp, mask, 0, 0, 32);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
    using namespace ::scratch::host;
    return from_bits<T>(worker().warp_op(WarpOp::ShflIdx, mask, to_bits(var), src_lane, width));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    using namespace ::scratch::host;
    return from_bits<T>(worker().warp_op(WarpOp::ShflUp, mask, to_bits(var), int(delta), width));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    using namespace ::scratch::host;
    return from_bits<T>(worker().warp_op(WarpOp::ShflDown, mask, to_bits(var), int(delta), width));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
    using namespace ::scratch::host;
    return from_bits<T>(worker().warp_op(WarpOp::ShflXor, mask, to_bits(var), lane_mask, width));
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
    using namespace ::scratch::host;
    return unsigned(worker().warp_op(WarpOp::Ballot, mask, predicate != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int predicate) {
    using namespace ::scratch::host;
    return int(worker().warp_op(WarpOp::Any, mask, predicate != 0, 0, 32));
}
inline int __all_sync(unsigned mask, int predicate) {
    using namespace ::scratch::host;
    return int(worker().warp_op(WarpOp::All, mask, predicate != 0, 0, 32));
}
#define __activemask() ::scratch::host::worker().active_mask(__FILE__ ":" SCRATCH_STRINGIFY(__LINE__))
[[noreturn]] inline void __trap() { ::scratch::host::device_fail("__trap() called"); }

// ------------------------------------------------------------------------------------ atomics
// Blocks run concurrently on the pool's threads, so these are real atomic operations.
template <typename T>
inline T scratch_atomic_cas_update(T* address, T (*update)(T, T), T operand) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomic on 4 or 8 bytes");
    using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    Bits* bits = reinterpret_cast<Bits*>(address);
    Bits old_bits = __atomic_load_n(bits, __ATOMIC_RELAXED);
    for (;;) {
        T old_value;
        std::memcpy(&old_value, &old_bits, sizeof(T));
        const T new_value = update(old_value, operand);
        Bits new_bits;
        std::memcpy(&new_bits, &new_value, sizeof(T));
        if (__atomic_compare_exchange_n(bits, &old_bits, new_bits, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
            return old_value;
    }
}
inline float atomicAdd(float* a, float v) {
    return scratch_atomic_cas_update<float>(a, [](float x, float y) { return x + y; }, v);
}
inline double atomicAdd(double* a, double v) {
    return scratch_atomic_cas_update<double>(a, [](double x, double y) { return x + y; }, v);
}
inline int atomicAdd(int* a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);
}
inline int atomicSub(int* a, int v) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicSub(unsigned* a, unsigned v) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }
inline int atomicMax(int* a, int v) {
    return scratch_atomic_cas_update<int>(a, [](int x, int y) { return x > y ? x : y; }, v);
}
inline unsigned atomicMax(unsigned* a, unsigned v) {
    return scratch_atomic_cas_update<unsigned>(a, [](unsigned x, unsigned y) { return x > y ? x : y; }, v);
}
inline int atomicMin(int* a, int v) {
    return scratch_atomic_cas_update<int>(a, [](int x, int y) { return x < y ? x : y; }, v);
}
inline unsigned atomicMin(unsigned* a, unsigned v) {
    return scratch_atomic_cas_update<unsigned>(a, [](unsigned x, unsigned y) { return x < y ? x : y; }, v);
}
template <typename T>
inline T scratch_atomic_cas(T* a, T compare, T value) {
    __atomic_compare_exchange_n(a, &compare, value, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare;   // the old value, whether or not the swap happened
}
inline int atomicCAS(int* a, int c, int v) { return scratch_atomic_cas(a, c, v); }
inline unsigned atomicCAS(unsigned* a, unsigned c, unsigned v) { return scratch_atomic_cas(a, c, v); }
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long c, unsigned long long v) {
    return scratch_atomic_cas(a, c, v);
}
inline int atomicExch(int* a, int v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicExch(unsigned* a, unsigned v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }
inline float atomicExch(float* a, float v) {
    return scratch_atomic_cas_update<float>(a, [](float, float y) { return y; }, v);
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ------------------------------------------------------------------------ math and bit intrinsics
// The fast-math intrinsics compute the exact function here; the GPU's approximations differ by a
// few ulp, which the kernel tests' tolerances cover.
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline int __float2int_rn(float x) { return int(nearbyintf(x)); }
inline int __float_as_int(float x) { return ::scratch::host::from_bits<int>(::scratch::host::to_bits(x)); }
inline unsigned __float_as_uint(float x) { return ::scratch::host::from_bits<unsigned>(::scratch::host::to_bits(x)); }
inline float __int_as_float(int x) { return ::scratch::host::from_bits<float>(::scratch::host::to_bits(x)); }
inline float __uint_as_float(unsigned x) { return ::scratch::host::from_bits<float>(::scratch::host::to_bits(x)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x ? __builtin_clz(unsigned(x)) : 32; }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
    return (x >> 16) | (x << 16);
}
template <typename T>
inline T __ldg(const T* p) { return *p; }
// CUDA's min/max overloads for device code.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
