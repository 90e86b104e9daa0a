// cuda_cpu.h -- run CUDA C kernels on the CPU, one fiber per CUDA thread.
//
// Included (by the harness in tests/cudasim/__init__.py) before the kernel's .cu text, which is
// compiled unchanged except for two rewrites of shared-memory declarations: `extern __shared__ T
// name[];` becomes a pointer to the block's dynamic shared buffer, and each static `__shared__`
// variable gets a `SharedPoison` registration after it.  g++ then sees ordinary (GNU) C++17.
//
// Execution model
//   * A launch runs the blocks of the grid one after another, in a shuffled (seeded) order.
//   * Every thread of a block is a fiber with its own stack.  A fiber runs until it reaches a
//     barrier (__syncthreads, __syncwarp, a warp shuffle/vote) or returns; the scheduler then picks
//     the next runnable fiber at random.  So between barriers the threads of a block run one after
//     another in a random order: a missing barrier or a race changes the result for some seed.
//   * __syncthreads releases only when every thread of the block waits at the same barrier (same
//     source line, same count of barriers passed).  Threads that returned while others wait, or
//     threads waiting at different barriers, are an error (UB on a GPU), reported to Python.
//   * Warp operations gather the 32 lanes of a warp (fewer in a partial last warp) like a barrier,
//     then every lane reads the values deposited at the call.
//   * static __shared__ variables are function-local statics (shared by the fibers of the running
//     block); they and the dynamic shared buffer are filled with 0xFF bytes (NaN for floating
//     point) before each block, and the bytes after `shared_mem` are checked afterwards.
//   * Atomics are plain read-modify-writes (fibers never interleave inside one).
#pragma once

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#if !defined(__x86_64__) || defined(CUDASIM_UCONTEXT) || defined(__SANITIZE_ADDRESS__)
#define CUDASIM_USE_UCONTEXT 1
#include <ucontext.h>
#endif

// ThreadSanitizer mode (-fsanitize=thread): every fiber is a TSan fiber, barriers and warp
// operations are release/acquire pairs on per-block sync objects, and the runtime's own bookkeeping
// is not instrumented.  So TSan reports any two accesses of different CUDA threads to one address,
// at least one a write, that no barrier orders -- whether or not the result depends on it.
#if defined(__SANITIZE_THREAD__)
#define CUDASIM_TSAN 1
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
void AnnotateNewMemory(const char* file, int line, const volatile void* mem, size_t size);
}
#define CUDASIM_RUNTIME __attribute__((no_sanitize_thread, noinline))
#else
#define CUDASIM_RUNTIME
#endif

#ifndef CUDASIM_STACK_BYTES
#define CUDASIM_STACK_BYTES (256 * 1024)
#endif
#ifndef CUDASIM_MAX_DYNAMIC_SHARED
#define CUDASIM_MAX_DYNAMIC_SHARED (232448)  // 227 KiB: the per-block opt-in maximum of sm_90
#endif
#define CUDASIM_SHARED_GUARD 1024
#ifndef CUDASIM_TSAN_STACK_RESET
#define CUDASIM_TSAN_STACK_RESET (32 * 1024)
#endif

#define CUDASIM_EXPORT extern "C" __attribute__((visibility("default")))

// ------------------------------------------------------------------------------------------------
// Vector and index types
struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
#define CUDASIM_VEC2(T, N) struct N { T x, y; }; \
    static inline N make_##N(T x, T y) { return N{x, y}; }
#define CUDASIM_VEC4(T, N) struct N { T x, y, z, w; }; \
    static inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
CUDASIM_VEC2(float, float2)
CUDASIM_VEC2(double, double2)
CUDASIM_VEC2(int, int2)
CUDASIM_VEC4(float, float4)
CUDASIM_VEC4(int, int4)
struct float3 { float x, y, z; };
static inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
static inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

namespace cudasim {

enum State { RUNNABLE = 0, AT_BARRIER = 1, AT_WARP = 2, DONE = 3 };
enum WarpOp { W_SYNC = 1, W_SHFL = 2, W_SHFL_UP = 3, W_SHFL_DOWN = 4, W_SHFL_XOR = 5, W_BALLOT = 6 };

struct Fiber {
#ifdef CUDASIM_USE_UCONTEXT
    ucontext_t ctx;
#else
    void* sp;
#endif
    uint3 tid;
    int linear;
    int state;
    // __syncthreads bookkeeping
    const char* bar_file;
    int bar_line;
    long bar_count;
    // warp exchange: deposited at the call, read after the release
    int wop;
    unsigned wmask;
    int warg;   // src lane / delta / lane mask
    int wwidth;
    int wline;
    uint64_t win;
    uint64_t wout;
    long wcount;     // warp operations passed
    void* tsan;      // TSan fiber (TSan mode)
};

struct Runtime {
    Fiber* cur = nullptr;
    uint3 block_idx{0, 0, 0};
    dim3 block_dim, grid_dim;
    std::vector<Fiber> fibers;
    std::vector<char*> stacks;
#ifdef CUDASIM_USE_UCONTEXT
    ucontext_t sched_ctx;
#else
    void* sched_sp = nullptr;
#endif
    void (*body)() = nullptr;
    void** argv = nullptr;
    uint64_t rng = 0;
    int failed = 0;
    char msg[2048];
    void* sched_tsan = nullptr;
    char* sync = nullptr;  // per-block TSan sync objects: [0] start, [1..2] barriers, [3 + 2w + p] warps
    char end_sync = 0;
    size_t dyn_bytes = 0;
    size_t dyn_limit = CUDASIM_MAX_DYNAMIC_SHARED;
    alignas(256) unsigned char dyn[CUDASIM_MAX_DYNAMIC_SHARED + CUDASIM_SHARED_GUARD];
};

inline Runtime rt;

inline uint64_t next_random() {
    // splitmix64
    uint64_t z = (rt.rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Record the first error; the scheduler aborts the launch once control returns to it.
__attribute__((format(printf, 1, 2))) inline void fail(const char* fmt, ...) {
    if (rt.failed) return;
    rt.failed = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rt.msg, sizeof rt.msg, fmt, ap);
    va_end(ap);
}

inline void* dynamic_shared() { return rt.dyn; }

// Static __shared__ variables register themselves (first time a thread passes the declaration);
// launch() poisons every registered one before each block.
struct SharedRegion { void* p; size_t n; };
inline std::vector<SharedRegion> shared_regions;
struct SharedPoison {
    SharedPoison(void* p, size_t n) {
        shared_regions.push_back(SharedRegion{p, n});
        memset(p, 0xFF, n);
    }
};

// ------------------------------------------------------------------------------------------------
// Context switching
#ifndef CUDASIM_USE_UCONTEXT
extern "C" void cudasim_switch_(void** save_sp, void* new_sp);
extern "C" void cudasim_trampoline_();
asm(R"(
    .text
    .p2align 4
    .globl cudasim_switch_
    .hidden cudasim_switch_
    .type cudasim_switch_, @function
cudasim_switch_:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cudasim_switch_, .-cudasim_switch_
    .p2align 4
    .globl cudasim_trampoline_
    .hidden cudasim_trampoline_
    .type cudasim_trampoline_, @function
cudasim_trampoline_:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size cudasim_trampoline_, .-cudasim_trampoline_
)");
#endif

CUDASIM_RUNTIME inline void fiber_main(Fiber* f) {
#ifdef CUDASIM_TSAN
    __tsan_acquire(&rt.sync[0]);  // the block's inputs and poisoned shared memory, nothing of other blocks
#endif
    rt.body();
    f->state = DONE;
#ifdef CUDASIM_TSAN
    __tsan_release(&rt.end_sync);  // the launch's results, for the host
    __tsan_switch_to_fiber(rt.sched_tsan, 1);
#endif
#ifdef CUDASIM_USE_UCONTEXT
    // returning ends the context and resumes uc_link (the scheduler)
#else
    cudasim_switch_(&f->sp, rt.sched_sp);
    __builtin_trap();
#endif
}

#ifdef CUDASIM_USE_UCONTEXT
inline void fiber_entry_uc(unsigned hi, unsigned lo) {
    fiber_main(reinterpret_cast<Fiber*>((static_cast<uintptr_t>(hi) << 32) | lo));
}
#endif

// Suspend the current fiber and return to the scheduler.
CUDASIM_RUNTIME inline void yield_to_scheduler() {
    asm volatile("" ::: "memory");
    Fiber* f = rt.cur;
#ifdef CUDASIM_TSAN
    __tsan_switch_to_fiber(rt.sched_tsan, 1);  // 1: no synchronisation implied by the switch
#endif
#ifdef CUDASIM_USE_UCONTEXT
    swapcontext(&f->ctx, &rt.sched_ctx);
#else
    cudasim_switch_(&f->sp, rt.sched_sp);
#endif
    asm volatile("" ::: "memory");
}

CUDASIM_RUNTIME inline void resume(Fiber* f) {
    rt.cur = f;
#ifdef CUDASIM_TSAN
    __tsan_switch_to_fiber(f->tsan, 1);
#endif
#ifdef CUDASIM_USE_UCONTEXT
    swapcontext(&rt.sched_ctx, &f->ctx);
#else
    cudasim_switch_(&rt.sched_sp, f->sp);
#endif
    rt.cur = nullptr;
}

CUDASIM_RUNTIME inline char* stack_for(int t) {
    while ((int)rt.stacks.size() <= t) {
        const size_t page = 4096;
        void* p = mmap(nullptr, CUDASIM_STACK_BYTES + page, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return nullptr;
        mprotect(p, page, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
        rt.stacks.push_back(static_cast<char*>(p) + page);
    }
    return rt.stacks[t];
}

#ifdef CUDASIM_TSAN
// TSan fibers are expensive to create (about 1 ms each), so they are pooled: two per thread index,
// used by alternate blocks of a launch.  A TSan fiber orders its own accesses, so thread t of a
// block is (wrongly) ordered after thread t of the block two positions earlier in the shuffled
// block order; any other pair of blocks is unordered, as on a GPU.
inline std::vector<void*> tsan_fibers[2];
inline uint64_t tsan_block_parity = 0;
CUDASIM_RUNTIME inline void* tsan_fiber_for(int t) {
    std::vector<void*>& pool = tsan_fibers[tsan_block_parity & 1];
    while ((int)pool.size() <= t) pool.push_back(__tsan_create_fiber(0));
    return pool[t];
}
#endif

CUDASIM_RUNTIME inline bool start_fiber(Fiber* f, int t) {
    char* stack = stack_for(t);
    if (!stack) return false;
#ifdef CUDASIM_TSAN
    f->tsan = tsan_fiber_for(t);
    // a fresh stack per block: forget the top CUDASIM_TSAN_STACK_RESET bytes' history (kernels
    // use a few KiB; resetting all of it costs more than the kernel)
    AnnotateNewMemory(__FILE__, __LINE__, stack + CUDASIM_STACK_BYTES - CUDASIM_TSAN_STACK_RESET,
                      CUDASIM_TSAN_STACK_RESET);
#endif
#ifdef CUDASIM_USE_UCONTEXT
    getcontext(&f->ctx);
    f->ctx.uc_stack.ss_sp = stack;
    f->ctx.uc_stack.ss_size = CUDASIM_STACK_BYTES;
    f->ctx.uc_link = &rt.sched_ctx;
    uintptr_t p = reinterpret_cast<uintptr_t>(f);
    makecontext(&f->ctx, (void (*)())fiber_entry_uc, 2, (unsigned)(p >> 32), (unsigned)(p & 0xffffffffu));
#else
    uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + CUDASIM_STACK_BYTES) & ~uintptr_t(15);
    uint64_t* s = reinterpret_cast<uint64_t*>(top);
    s[-1] = reinterpret_cast<uint64_t>(&cudasim_trampoline_);  // ret target
    s[-2] = 0;                                                   // rbp
    s[-3] = 0;                                                   // rbx
    s[-4] = reinterpret_cast<uint64_t>(f);                       // r12: argument
    s[-5] = reinterpret_cast<uint64_t>(&fiber_main);             // r13: entry
    s[-6] = 0;                                                   // r14
    s[-7] = 0;                                                   // r15
    uint32_t csr[2];
    asm volatile("stmxcsr %0" : "=m"(csr[0]));
    asm volatile("fnstcw %0" : "=m"(csr[1]));
    std::memcpy(&s[-8], csr, 8);
    f->sp = &s[-8];
#endif
    return true;
}

// ------------------------------------------------------------------------------------------------
// Hand control to the scheduler until this fiber may go on.  Under TSan the wait is a release and
// then an acquire on the block's sync object `slot`: the happens-before edge of a barrier or a warp
// exchange (slots: see Runtime::sync).
CUDASIM_RUNTIME inline void yield_synced(int slot) {
#ifdef CUDASIM_TSAN
    char* sync = &rt.sync[slot];
    __tsan_release(sync);
#endif
    yield_to_scheduler();
#ifdef CUDASIM_TSAN
    __tsan_acquire(sync);
#endif
}

// Barriers
CUDASIM_RUNTIME inline void syncthreads(const char* file, int line) {
    Fiber* f = rt.cur;
    f->bar_file = file;
    f->bar_line = line;
    f->state = AT_BARRIER;
    yield_synced(1 + (f->bar_count & 1));
    f->bar_count++;
}

inline int warp_size_of(int warp) {
    const int nthreads = (int)rt.fibers.size();
    return std::min(32, nthreads - warp * 32);
}

template <typename T>
CUDASIM_RUNTIME inline T warp_op(int op, unsigned mask, T value, int arg, int width, int line) {
    static_assert(sizeof(T) <= 8, "cudasim: warp exchange of a type wider than 8 bytes");
    static_assert(std::is_trivially_copyable<T>::value, "cudasim: warp exchange of a non-trivial type");
    Fiber* f = rt.cur;
    f->wop = op;
    f->wmask = mask;
    f->warg = arg;
    f->wwidth = width;
    f->wline = line;
    f->win = 0;
    std::memcpy(&f->win, &value, sizeof(T));
    f->state = AT_WARP;
    yield_synced(3 + 2 * (f->linear / 32) + (f->wcount & 1));
    f->wcount++;
    T out;
    std::memcpy(&out, &f->wout, sizeof(T));
    return out;
}

// Called by the scheduler when every lane of `warp` waits at a warp operation.
CUDASIM_RUNTIME inline void release_warp(int warp) {
    const int base = warp * 32;
    const int size = warp_size_of(warp);
    const unsigned lanes = size == 32 ? 0xffffffffu : ((1u << size) - 1u);
    Fiber* first = &rt.fibers[base];
    for (int l = 0; l < size; ++l) {
        Fiber* f = &rt.fibers[base + l];
        if (f->wop != first->wop || f->wmask != first->wmask || f->wwidth != first->wwidth) {
            fail("warp %d: lanes 0 and %d reached different warp operations (op %d line %d vs op %d line %d) "
                 "or masks (0x%x vs 0x%x)", warp, l, first->wop, first->wline, f->wop, f->wline,
                 first->wmask, f->wmask);
            return;
        }
    }
    if (first->wmask != lanes) {
        fail("warp %d (%d lanes, line %d): mask 0x%x must name exactly the warp's existing lanes (0x%x); "
             "partial masks are not supported", warp, size, first->wline, first->wmask, lanes);
        return;
    }
    const int width = first->wwidth;
    if (width < 1 || width > 32 || (width & (width - 1))) {
        fail("warp %d (line %d): width %d is not a power of two in [1, 32]", warp, first->wline, width);
        return;
    }
    unsigned ballot = 0;
    for (int l = 0; l < size; ++l)
        if (rt.fibers[base + l].win) ballot |= 1u << l;
    for (int l = 0; l < size; ++l) {
        Fiber* f = &rt.fibers[base + l];
        const int seg = l & ~(width - 1);
        int src = l;
        switch (f->wop) {
            case W_SYNC: break;
            case W_BALLOT: break;
            case W_SHFL: src = seg + (((f->warg % width) + width) % width); break;
            case W_SHFL_UP: src = (l - seg) >= f->warg ? l - f->warg : l; break;
            case W_SHFL_DOWN: src = (l - seg) + f->warg < width ? l + f->warg : l; break;
            case W_SHFL_XOR: src = l ^ f->warg; if ((src & ~(width - 1)) > seg) src = l; break;
        }
        if (f->wop == W_BALLOT) {
            f->wout = ballot;
        } else if (src < 0 || src >= size) {
            fail("warp %d lane %d (line %d): shuffle reads lane %d, which does not exist", warp, l, f->wline, src);
            return;
        } else {
            f->wout = rt.fibers[base + src].win;
        }
    }
    for (int l = 0; l < size; ++l) rt.fibers[base + l].state = RUNNABLE;
}

// ------------------------------------------------------------------------------------------------
// One block: run every thread to completion, barrier phase by barrier phase, in random order.
CUDASIM_RUNTIME inline void run_block() {
    const int nthreads = (int)rt.fibers.size();
    std::vector<int> runnable;
    runnable.reserve(nthreads);
    for (int t = 0; t < nthreads; ++t) runnable.push_back(t);
    for (;;) {
        while (!runnable.empty()) {
            const size_t pick = next_random() % runnable.size();
            Fiber* f = &rt.fibers[runnable[pick]];
            runnable[pick] = runnable.back();
            runnable.pop_back();
            resume(f);
            if (rt.failed) return;
            if (f->state == AT_WARP) {
                const int warp = f->linear / 32;
                const int base = warp * 32, size = warp_size_of(warp);
                bool all = true;
                for (int l = 0; l < size && all; ++l) all = rt.fibers[base + l].state == AT_WARP;
                if (all) {
                    release_warp(warp);
                    if (rt.failed) return;
                    for (int l = 0; l < size; ++l) runnable.push_back(base + l);
                }
            } else if (f->state == RUNNABLE) {
                fail("internal: fiber %d yielded while runnable", f->linear);
                return;
            }
        }
        int done = 0, at_bar = 0, at_warp = 0;
        Fiber* ref = nullptr;
        for (auto& f : rt.fibers) {
            if (f.state == DONE) ++done;
            else if (f.state == AT_WARP) ++at_warp;
            else if (f.state == AT_BARRIER) { ++at_bar; if (!ref) ref = &f; }
        }
        if (done == nthreads) return;
        if (at_warp) {
            for (auto& f : rt.fibers)
                if (f.state == AT_WARP) {
                    fail("block (%u,%u,%u): thread %d waits at a warp operation (line %d) that its warp "
                         "never completes (%d threads returned, %d wait at __syncthreads)",
                         rt.block_idx.x, rt.block_idx.y, rt.block_idx.z, f.linear, f.wline, done, at_bar);
                    return;
                }
        }
        if (done) {
            fail("block (%u,%u,%u): %d of %d threads wait at __syncthreads (%s:%d) while %d returned: "
                 "a barrier in divergent code (undefined behaviour on a GPU)",
                 rt.block_idx.x, rt.block_idx.y, rt.block_idx.z, at_bar, nthreads, ref->bar_file,
                 ref->bar_line, done);
            return;
        }
        for (auto& f : rt.fibers) {
            if (f.bar_line != ref->bar_line || f.bar_count != ref->bar_count || strcmp(f.bar_file, ref->bar_file)) {
                fail("block (%u,%u,%u): threads %d and %d wait at different barriers (%s:%d, barrier #%ld vs "
                     "%s:%d, barrier #%ld): a barrier in divergent code (undefined behaviour on a GPU)",
                     rt.block_idx.x, rt.block_idx.y, rt.block_idx.z, ref->linear, f.linear, ref->bar_file,
                     ref->bar_line, ref->bar_count, f.bar_file, f.bar_line, f.bar_count);
                return;
            }
        }
        for (auto& f : rt.fibers) {
            f.state = RUNNABLE;
            runnable.push_back(f.linear);
        }
    }
}

// Run the whole grid.  Returns 0 on success; otherwise rt.msg says what went wrong.
CUDASIM_RUNTIME inline int launch(void (*body)(), void** argv, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                  unsigned by, unsigned bz, size_t shared_mem, uint64_t seed, char* err, size_t errlen) {
    rt.failed = 0;
    rt.msg[0] = 0;
    rt.body = body;
    rt.argv = argv;
    rt.rng = seed * 0x2545F4914F6CDD1Dull + 0x1234567ull;
    rt.grid_dim = dim3(gx, gy, gz);
    rt.block_dim = dim3(bx, by, bz);
    rt.dyn_bytes = shared_mem;
    const int nthreads = (int)(bx * by * bz);
    if (shared_mem > CUDASIM_MAX_DYNAMIC_SHARED) {
        snprintf(err, errlen, "shared_mem = %zu exceeds the harness maximum %d", shared_mem,
                 CUDASIM_MAX_DYNAMIC_SHARED);
        return 1;
    }
    const uint64_t nblocks = (uint64_t)gx * gy * gz;
    std::vector<uint64_t> order(nblocks);
    for (uint64_t i = 0; i < nblocks; ++i) order[i] = i;
    for (uint64_t i = nblocks; i > 1; --i) std::swap(order[i - 1], order[next_random() % i]);
    rt.fibers.assign(nthreads, Fiber{});
#ifdef CUDASIM_TSAN
    rt.sched_tsan = __tsan_get_current_fiber();
#endif
    for (uint64_t blk : order) {
        rt.block_idx = uint3{(unsigned)(blk % gx), (unsigned)((blk / gx) % gy), (unsigned)(blk / ((uint64_t)gx * gy))};
#ifdef CUDASIM_TSAN
        // Shared memory is new memory for every block (no happens-before with other blocks), and
        // the block gets fresh sync objects (freed memory drops TSan's clocks).
        AnnotateNewMemory(__FILE__, __LINE__, rt.dyn, shared_mem + CUDASIM_SHARED_GUARD);
        for (const SharedRegion& r : shared_regions) AnnotateNewMemory(__FILE__, __LINE__, r.p, r.n);
        rt.sync = static_cast<char*>(malloc(3 + 2 * ((nthreads + 31) / 32)));
#endif
        memset(rt.dyn, 0xFF, shared_mem + CUDASIM_SHARED_GUARD);
        for (const SharedRegion& r : shared_regions) memset(r.p, 0xFF, r.n);
#ifdef CUDASIM_TSAN
        __tsan_release(&rt.sync[0]);
#endif
        for (int t = 0; t < nthreads; ++t) {
            Fiber* f = &rt.fibers[t];
            *f = Fiber{};
            f->linear = t;
            f->tid = uint3{(unsigned)(t % bx), (unsigned)((t / bx) % by), (unsigned)(t / (bx * by))};
            f->state = RUNNABLE;
            f->bar_file = "";
            if (!start_fiber(f, t)) {
                snprintf(err, errlen, "could not allocate a fiber stack");
                return 1;
            }
        }
        run_block();
#ifdef CUDASIM_TSAN
        ++tsan_block_parity;
        free(rt.sync);
        rt.sync = nullptr;
        __tsan_acquire(&rt.end_sync);
#endif
        if (!rt.failed) {
            for (size_t i = 0; i < CUDASIM_SHARED_GUARD; ++i)
                if (rt.dyn[shared_mem + i] != 0xFF) {
                    fail("block (%u,%u,%u) wrote past the dynamic shared memory (shared_mem = %zu bytes): "
                         "byte %zu modified", rt.block_idx.x, rt.block_idx.y, rt.block_idx.z, shared_mem,
                         shared_mem + i);
                    break;
                }
        }
        if (rt.failed) {
            snprintf(err, errlen, "%s", rt.msg);
            return 2;
        }
    }
    return 0;
}

// ------------------------------------------------------------------------------------------------
// Kernel signatures: "p[const]:<code>" for pointers, "s:<code>" for scalars, comma separated;
// <code> is a numpy-like kind and size: f8 double, i4 int, u8 unsigned long long, b1 bool, V<n> other.
template <typename U>
constexpr size_t sizeof_or_zero() {
    if constexpr (std::is_void<U>::value) return 0;
    else return sizeof(U);
}

template <typename T>
inline void type_code(std::vector<char>& out) {
    using U = std::remove_cv_t<T>;
    char buf[32];
    if (std::is_same<U, void>::value) snprintf(buf, sizeof buf, "v0");
    else if (std::is_same<U, bool>::value) snprintf(buf, sizeof buf, "b1");
    else if (std::is_floating_point<U>::value) snprintf(buf, sizeof buf, "f%d", (int)sizeof_or_zero<U>());
    else if (std::is_integral<U>::value && std::is_signed<U>::value) snprintf(buf, sizeof buf, "i%d", (int)sizeof_or_zero<U>());
    else if (std::is_integral<U>::value) snprintf(buf, sizeof buf, "u%d", (int)sizeof_or_zero<U>());
    else snprintf(buf, sizeof buf, "V%d", (int)sizeof_or_zero<U>());
    out.insert(out.end(), buf, buf + strlen(buf));
}

template <typename P>
inline void param_code(std::vector<char>& out) {
    if (!out.empty()) out.push_back(',');
    using Q = std::remove_reference_t<P>;
    if constexpr (std::is_pointer<Q>::value) {
        using E = std::remove_pointer_t<Q>;
        out.push_back('p');
        if (std::is_const<E>::value) { const char* c = "const"; out.insert(out.end(), c, c + 5); }
        out.push_back(':');
        type_code<E>(out);
    } else {
        out.push_back('s');
        out.push_back(':');
        type_code<Q>(out);
    }
}

template <typename... P>
inline const char* signature(void (*)(P...)) {
    static std::vector<char> s;
    if (s.empty()) {
        (param_code<P>(s), ...);
        s.push_back(0);
    }
    return s.data();
}

template <typename... P, size_t... I>
inline void invoke_impl(void (*k)(P...), void** argv, std::index_sequence<I...>) {
    k(*static_cast<std::remove_reference_t<P>*>(argv[I])...);
}

template <typename... P>
inline void invoke(void (*k)(P...), void** argv) {
    invoke_impl(k, argv, std::index_sequence_for<P...>{});
}

}  // namespace cudasim

// ================================================================================================
// The CUDA C surface seen by kernels.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __constant__ static
#define __managed__
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __grid_constant__

#define threadIdx (::cudasim::rt.cur->tid)
#define blockIdx (::cudasim::rt.block_idx)
#define blockDim (::cudasim::rt.block_dim)
#define gridDim (::cudasim::rt.grid_dim)
static constexpr int warpSize = 32;

#define __syncthreads() ::cudasim::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::cudasim::syncwarp_(__LINE__, ##__VA_ARGS__)
#define __shfl_sync(mask, v, src, ...) ::cudasim::shfl_(::cudasim::W_SHFL, mask, v, src, __LINE__, ##__VA_ARGS__)
#define __shfl_up_sync(mask, v, d, ...) ::cudasim::shfl_(::cudasim::W_SHFL_UP, mask, v, d, __LINE__, ##__VA_ARGS__)
#define __shfl_down_sync(mask, v, d, ...) ::cudasim::shfl_(::cudasim::W_SHFL_DOWN, mask, v, d, __LINE__, ##__VA_ARGS__)
#define __shfl_xor_sync(mask, v, m, ...) ::cudasim::shfl_(::cudasim::W_SHFL_XOR, mask, v, m, __LINE__, ##__VA_ARGS__)
#define __ballot_sync(mask, pred) ::cudasim::ballot_(mask, pred, __LINE__)
#define __any_sync(mask, pred) (::cudasim::ballot_(mask, pred, __LINE__) != 0u)
#define __all_sync(mask, pred) (::cudasim::ballot_(mask, !(pred), __LINE__) == 0u)

namespace cudasim {
inline void syncwarp_(int line, unsigned mask = 0xffffffffu) { warp_op<int>(W_SYNC, mask, 0, 0, 32, line); }
template <typename T>
inline T shfl_(int op, unsigned mask, T v, int arg, int line, int width = 32) {
    return warp_op<T>(op, mask, v, arg, width, line);
}
inline unsigned ballot_(unsigned mask, int pred, int line) {
    return (unsigned)warp_op<uint64_t>(W_BALLOT, mask, pred ? 1u : 0u, 0, 32, line);
}
}  // namespace cudasim

// Memory fences: blocks run one at a time and fibers never interleave between barriers.
static inline void __threadfence() { asm volatile("" ::: "memory"); }
static inline void __threadfence_block() { asm volatile("" ::: "memory"); }
template <typename T> static inline T __ldg(const T* p) { return *p; }

// Atomics: relaxed __atomic compare-and-swap loops on the bit pattern (fibers only switch at
// barriers, so they never contend; the builtins make them atomics for ThreadSanitizer too).
namespace cudasim {
template <typename T, typename Op>
inline T atomic_rmw(T* a, Op op) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "cudasim: atomics on 4- or 8-byte types only");
    using I = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    I* p = reinterpret_cast<I*>(a);
    I old = __atomic_load_n(p, __ATOMIC_RELAXED);
    for (;;) {
        T o;
        memcpy(&o, &old, sizeof(T));
        const T n = op(o);
        I ni;
        memcpy(&ni, &n, sizeof(T));
        if (__atomic_compare_exchange_n(p, &old, ni, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return o;
    }
}
}  // namespace cudasim
template <typename T> static inline T atomicAdd(T* a, T v) { return ::cudasim::atomic_rmw(a, [v](T o) { return T(o + v); }); }
template <typename T> static inline T atomicSub(T* a, T v) { return ::cudasim::atomic_rmw(a, [v](T o) { return T(o - v); }); }
template <typename T> static inline T atomicExch(T* a, T v) { return ::cudasim::atomic_rmw(a, [v](T) { return v; }); }
template <typename T> static inline T atomicMin(T* a, T v) { return ::cudasim::atomic_rmw(a, [v](T o) { return v < o ? v : o; }); }
template <typename T> static inline T atomicMax(T* a, T v) { return ::cudasim::atomic_rmw(a, [v](T o) { return v > o ? v : o; }); }
template <typename T> static inline T atomicCAS(T* a, T cmp, T v) { return ::cudasim::atomic_rmw(a, [cmp, v](T o) { return o == cmp ? v : o; }); }
template <typename T> static inline T atomicAnd(T* a, T v) { return ::cudasim::atomic_rmw(a, [v](T o) { return T(o & v); }); }
template <typename T> static inline T atomicOr(T* a, T v) { return ::cudasim::atomic_rmw(a, [v](T o) { return T(o | v); }); }
template <typename T> static inline T atomicXor(T* a, T v) { return ::cudasim::atomic_rmw(a, [v](T o) { return T(o ^ v); }); }

// Integer and float helpers of the CUDA math API (glibc already declares __sinf, __cosf, __expf, __sincosf).
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
static inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
static inline void sincos(float x, float* s, float* c) { ::sincosf(x, s, c); }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float rsqrt(float x) { return 1.0f / sqrtf(x); }
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
static inline double sinpi(double x) { return sin(M_PI * x); }
static inline double cospi(double x) { return cos(M_PI * x); }
static inline float sinpif(float x) { return sinf((float)M_PI * x); }
static inline float cospif(float x) { return cosf((float)M_PI * x); }
static inline void sincospi(double x, double* s, double* c) { ::sincos(M_PI * x, s, c); }
static inline void sincospif(float x, float* s, float* c) { ::sincosf((float)M_PI * x, s, c); }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
static inline float __int_as_float(int x) { float f; memcpy(&f, &x, 4); return f; }
static inline int __float_as_int(float x) { int i; memcpy(&i, &x, 4); return i; }
static inline double __longlong_as_double(long long x) { double f; memcpy(&f, &x, 8); return f; }
static inline long long __double_as_longlong(double x) { long long i; memcpy(&i, &x, 8); return i; }
#define __trap() ::cudasim::trap_(__FILE__, __LINE__)
namespace cudasim {
CUDASIM_RUNTIME inline void trap_(const char* file, int line) {
    fail("__trap() at %s:%d", file, line);
    rt.cur->state = DONE;
    yield_to_scheduler();  // never resumed: the scheduler aborts the launch
    __builtin_trap();
}
}  // namespace cudasim
