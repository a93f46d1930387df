// SFPO reposition on CPU shards: p <- s + alpha * (p - s), in place, for a whole list of tensors in one call.
//
// Plain C++17 with an extern "C" interface, loaded with ctypes by kernels/_native.py; no torch headers, so
// the build never needs torch. It reproduces, bit for bit, the torch formula (_native.py, reposition_ref_)
//     (s.float() + alpha * (p.float() - s.float())).to(p.dtype)
//   - The arithmetic is float32: alpha is the Python float rounded once to float32 (as torch rounds a
//     scalar that multiplies a float32 tensor), and sub, mul and add each round on their own, because torch
//     runs them as three kernels. A fused multiply-add would differ in the last bit, so contraction is
//     switched off for this file (pragmas below) whatever -ffp-contract the build or target defaults to.
//   - float32 -> bfloat16 rounds to nearest even like c10::BFloat16; NaN stays NaN (quieted, sign kept).
//   - float32 <-> float16 are the exact IEEE conversions (RNE, subnormals, inf; NaN -> quiet NaN).
// The conversions are branch-free bit arithmetic rather than _Float16 so that every (p, s) dtype pair
// vectorises on any ISA (without F16C, gcc lowers _Float16 conversions to a libgcc call per element).
//
// Threads: the list is cut into (tensor, chunk) work items of kChunk elements, handed out by OpenMP's dynamic
// schedule, so one huge tensor and many small ones balance alike. Without OpenMP it runs serially.
// Vectors: on x86-64 with gcc the loop is also compiled for AVX2 and AVX-512 and the best is picked at run
// time (see BaseIsa). p and s may be the same memory, but must not partially overlap.

#include <atomic>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

// omp simd only where OpenMP is on; without it gcc still vectorises (with a runtime overlap check).
#ifdef _OPENMP
#define FS_SIMD _Pragma("omp simd")
#else
#define FS_SIMD
#endif

#define FS_ALWAYS_INLINE __attribute__((always_inline))

// Run-time choice of instruction set: x86-64 with gcc (target attributes, __builtin_cpu_supports, and the
// prefer-vector-width option). Other compilers and targets get the baseline build only.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FS_X86_DISPATCH 1
#else
#define FS_X86_DISPATCH 0
#endif

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace {

// 64K elements: 256 KiB of float32 p plus as much s, so one item stays in a core's L2, and a 1B-element shard
// still makes ~16K items, plenty for dynamic scheduling to even out. Not tuned beyond that (bandwidth-bound).
constexpr int64_t kChunk = int64_t{1} << 16;

enum DType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

inline uint32_t as_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

inline float as_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

// Branch-free select. Written with masks, not ?:, so that gcc computes both sides unconditionally: with
// -ftrapping-math (the default) it will not speculate a float operation out of a branch, and the loop would
// not if-convert, hence not vectorise.
inline uint32_t select(bool c, uint32_t if_true, uint32_t if_false) {
    const uint32_t m = 0u - static_cast<uint32_t>(c);
    return (if_true & m) | (if_false & ~m);
}

// Storage tags: F32 is float, BF16 and F16 are raw 16-bit patterns.
struct F32 {
    using storage = float;
    static inline float load(float x) { return x; }
    static inline float store(float x) { return x; }
};

struct BF16 {
    using storage = uint16_t;
    static inline float load(uint16_t h) { return as_float(uint32_t{h} << 16); }
    static inline uint16_t store(float f) {
        const uint32_t u = as_bits(f);
        const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;  // round to nearest, ties to even
        const uint32_t nan = (u >> 16) | 0x0040u;                         // keep sign, set the quiet bit
        return static_cast<uint16_t>(select(f != f, nan, rounded));
    }
};

struct F16 {
    using storage = uint16_t;
    // Exact widening (after F. Giesen's half_to_float): rebias the exponent; subnormals are renormalised by a
    // float subtraction that is exact; inf/NaN get the all-ones exponent.
    static inline float load(uint16_t h) {
        const uint32_t exp_mask = 0x7C00u << 13;
        const uint32_t magnitude = (uint32_t{h} & 0x7FFFu) << 13;
        const uint32_t exp = magnitude & exp_mask;
        const uint32_t normal = magnitude + ((127u - 15u) << 23);
        const uint32_t inf_nan = normal + ((128u - 16u) << 23);
        const uint32_t subnormal = as_bits(as_float(normal + (1u << 23)) - as_float(113u << 23));
        const uint32_t bits = select(exp == exp_mask, inf_nan, select(exp == 0, subnormal, normal));
        return as_float(bits | ((uint32_t{h} & 0x8000u) << 16));
    }
    // Round-to-nearest-even narrowing (after F. Giesen's float_to_half_fast3_rtne).
    static inline uint16_t store(float f) {
        const uint32_t u = as_bits(f);
        const uint32_t sign = (u >> 16) & 0x8000u;
        const uint32_t a = u & 0x7FFFFFFFu;
        // |f| >= 65536: inf, or a NaN (made quiet).
        const uint32_t big = select(a > 0x7F800000u, 0x7E00u, 0x7C00u);
        // |f| < 2^-14: a half subnormal or zero. Adding 0.5 aligns the 10 mantissa bits at the bottom and the
        // float add rounds them to nearest even.
        const float denorm_magic = as_float(((127u - 15u) + (23u - 10u) + 1u) << 23);
        const uint32_t small = as_bits(as_float(a) + denorm_magic) - as_bits(denorm_magic);
        // Normal: rebias the exponent and round to nearest even by integer addition (carries into the
        // exponent, up to inf, are what IEEE rounding does).
        const uint32_t normal = (a + ((15u - 127u) << 23) + 0xFFFu + ((a >> 13) & 1u)) >> 13;
        const uint32_t out = select(a >= (143u << 23), big, select(a < (113u << 23), small, normal));
        return static_cast<uint16_t>(out | sign);
    }
};

template <typename P, typename S>
FS_ALWAYS_INLINE inline void lerp_span(void* p_raw, const void* s_raw, int64_t n, float alpha) {
    typename P::storage* p = static_cast<typename P::storage*>(p_raw);
    const typename S::storage* s = static_cast<const typename S::storage*>(s_raw);
    FS_SIMD
    for (int64_t i = 0; i < n; ++i) {
        const float sv = S::load(s[i]);
        const float pv = P::load(p[i]);
        p[i] = P::store(sv + alpha * (pv - sv));  // no fma: see the file header
    }
}

// One instantiation of the loop per instruction set. setup.py builds for the baseline ISA (SSE2 on x86-64),
// where the 16-bit conversions cost more than the memory traffic; the wider sets are compiled in as well and
// chosen at run time. Measured on one core of a 2-core AVX-512 Xeon (50M elements, wall time, GB/s moved):
// bf16/bf16 4.0 -> 8.2 (AVX2) -> 10.4 (AVX-512), fp16 p with fp32 s 2.1 -> 4.5 -> 8.4, fp32 13.0 -> 14.1 ->
// 14.9 (memory-bound). 512-bit vectors are asked for explicitly: with gcc's default preference for 256-bit
// ones the 16-bit paths were 20-40% slower.
struct BaseIsa {
    template <typename P, typename S>
    static void run(void* p, const void* s, int64_t n, float alpha) { lerp_span<P, S>(p, s, n, alpha); }
};

#if FS_X86_DISPATCH
struct Avx2Isa {
    template <typename P, typename S>
    __attribute__((target("avx2"))) static void run(void* p, const void* s, int64_t n, float alpha) {
        lerp_span<P, S>(p, s, n, alpha);
    }
};

struct Avx512Isa {
    template <typename P, typename S>
    __attribute__((target("avx512f,avx512bw,avx512vl,prefer-vector-width=512"))) static void run(
        void* p, const void* s, int64_t n, float alpha) {
        lerp_span<P, S>(p, s, n, alpha);
    }
};
#endif

enum IsaLevel : int32_t { kIsaBase = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };

int32_t best_isa() {
#if FS_X86_DISPATCH
    __builtin_cpu_init();  // checks the OS saves the wide registers too, not only cpuid
    if (__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) return kIsaAvx512;
    if (__builtin_cpu_supports("avx2")) return kIsaAvx2;
#endif
    return kIsaBase;
}

// The level in use: the best the CPU has, lowered by fs_native_isa(cap) (a hook for tests and benchmarks).
std::atomic<int32_t> g_isa{-1};

int32_t current_isa() {
    int32_t isa = g_isa.load(std::memory_order_relaxed);
    if (isa < 0) {
        isa = best_isa();
        g_isa.store(isa, std::memory_order_relaxed);
    }
    return isa;
}

using SpanFn = void (*)(void*, const void*, int64_t, float);

template <typename Isa, typename P>
SpanFn pick_slow(int32_t s_dtype) {
    switch (s_dtype) {
        case kFloat32: return &Isa::template run<P, F32>;
        case kBFloat16: return &Isa::template run<P, BF16>;
        case kFloat16: return &Isa::template run<P, F16>;
        default: return nullptr;
    }
}

template <typename Isa>
SpanFn pick_for(int32_t p_dtype, int32_t s_dtype) {
    switch (p_dtype) {
        case kFloat32: return pick_slow<Isa, F32>(s_dtype);
        case kBFloat16: return pick_slow<Isa, BF16>(s_dtype);
        case kFloat16: return pick_slow<Isa, F16>(s_dtype);
        default: return nullptr;
    }
}

SpanFn pick(int32_t p_dtype, int32_t s_dtype, int32_t isa) {
#if FS_X86_DISPATCH
    if (isa == kIsaAvx512) return pick_for<Avx512Isa>(p_dtype, s_dtype);
    if (isa == kIsaAvx2) return pick_for<Avx2Isa>(p_dtype, s_dtype);
#endif
    (void)isa;
    return pick_for<BaseIsa>(p_dtype, s_dtype);
}

int64_t element_size(int32_t dtype) { return dtype == kFloat32 ? 4 : 2; }

struct WorkItem {
    SpanFn fn;
    void* p;
    const void* s;
    int64_t n;
};

}  // namespace

extern "C" {

// Bumped whenever a signature or the meaning of a return code changes; kernels/_native.py checks it.
int fs_native_abi_version(void) { return 1; }

// The instruction-set level fs_reposition uses: 0 baseline, 1 AVX2, 2 AVX-512 (F, BW, VL). With cap >= 0 it
// first sets the level to min(cap, best the CPU has); cap < 0 only asks. All levels give identical results.
int fs_native_isa(int32_t cap) {
    if (cap >= 0) {
        const int32_t best = best_isa();
        g_isa.store(cap < best ? cap : best, std::memory_order_relaxed);
    }
    return current_isa();
}

// For each i in [0, n_tensors): p_ptrs[i][k] <- s + alpha * (p - s) over numels[i] elements, in p's dtype.
// Dtype codes: 0 float32, 1 bfloat16, 2 float16. num_threads <= 0 means the OpenMP default.
// Returns 0 on success, 1 for an unknown dtype, 2 for bad arguments (negative count or numel, a null pointer
// where data is needed), 3 when the work list cannot be allocated. Nothing is written unless it returns 0.
int fs_reposition(int64_t n_tensors, void* const* p_ptrs, const void* const* s_ptrs, const int64_t* numels,
                  const int32_t* p_dtypes, const int32_t* s_dtypes, float alpha, int32_t num_threads) {
    if (n_tensors < 0) return 2;
    if (n_tensors == 0) return 0;
    if (!p_ptrs || !s_ptrs || !numels || !p_dtypes || !s_dtypes) return 2;

    const int32_t isa = current_isa();
    std::vector<WorkItem> items;
    try {
        int64_t n_items = 0;
        for (int64_t t = 0; t < n_tensors; ++t) {
            if (!pick(p_dtypes[t], s_dtypes[t], isa)) return 1;
            if (numels[t] < 0) return 2;
            if (numels[t] > 0 && (!p_ptrs[t] || !s_ptrs[t])) return 2;
            n_items += (numels[t] + kChunk - 1) / kChunk;
        }
        items.reserve(static_cast<size_t>(n_items));
    } catch (const std::bad_alloc&) {
        return 3;
    }
    for (int64_t t = 0; t < n_tensors; ++t) {
        const SpanFn fn = pick(p_dtypes[t], s_dtypes[t], isa);
        char* p = static_cast<char*>(p_ptrs[t]);
        const char* s = static_cast<const char*>(s_ptrs[t]);
        const int64_t p_size = element_size(p_dtypes[t]);
        const int64_t s_size = element_size(s_dtypes[t]);
        for (int64_t start = 0; start < numels[t]; start += kChunk) {
            const int64_t n = numels[t] - start < kChunk ? numels[t] - start : kChunk;
            items.push_back({fn, p + start * p_size, s + start * s_size, n});
        }
    }

    const int64_t n_items = static_cast<int64_t>(items.size());
#ifdef _OPENMP
    const int threads = num_threads > 0 ? num_threads : omp_get_max_threads();
#pragma omp parallel for schedule(dynamic) num_threads(threads) if (n_items > 1 && threads > 1)
#else
    (void)num_threads;
#endif
    for (int64_t i = 0; i < n_items; ++i) {
        const WorkItem& w = items[static_cast<size_t>(i)];
        w.fn(w.p, w.s, w.n, alpha);
    }
    return 0;
}

}  // extern "C"
