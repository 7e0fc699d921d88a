/*
 * lpu_runtime._native: exact int8 kernels and fp16-KV attention for the emulated LPU.
 *
 * Every kernel exists twice: an AVX2/FMA/F16C version compiled with __attribute__((target)) and chosen at run
 * time (__builtin_cpu_supports), and a portable C version (other x86-64 CPUs, aarch64). Integer kernels are exact,
 * so both give the same result by construction. The float kernels (RMSNorm, SiLU, softmax, attention) use one
 * fixed arithmetic sequence per row (per row and head for attention): 8-lane partial sums reduced by one fixed
 * tree, a polynomial exp written once for 8 lanes, separate multiplies and adds (no FMA, built with
 * -ffp-contract=off). The portable versions replay the same sequence lane by lane, so both ISAs give
 * bit-identical floats, and a row never depends on the other rows of the call, the tiling or the thread count.
 *
 * Work is split into tasks run by a persistent pool: num_threads - 1 workers plus the calling thread, which
 * releases the GIL. Workers spin (with pause) for spin_us after their last task, then sleep on a condvar.
 *
 * The Python wrappers live in lpu_runtime/native.py; docs/kernels.md explains the choices and the benchmark.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if (defined(__x86_64__) || defined(_M_X64)) && !defined(LPU_PORTABLE_ONLY) /* -DLPU_PORTABLE_ONLY: as aarch64 */
#define LPU_X86 1
#include <immintrin.h>
#else
#define LPU_X86 0
#endif

#if LPU_X86
#define LPU_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

#define LPU_INLINE static inline __attribute__((always_inline))
#define QMAX 127
/* int32 accumulation bound: K * 128 * 127 must stay below 2^31 (weights may hold -128 after a bit flip). */
#define MAX_K 132104

/* ------------------------------------------------------------------------------------------------------------
 * Thread pool
 * ------------------------------------------------------------------------------------------------------------ */

typedef void (*task_fn)(void *ctx, int64_t task);

/* state packs gen (24 bits) | n_tasks (20 bits) | next task (20 bits): a task is claimed by one CAS that also
 * proves the job is still the one whose fields were read. */
#define ST_NEXT_BITS 20
#define ST_TASKS_BITS 20
#define ST_MAX_TASKS ((1u << ST_NEXT_BITS) - 1u)
#define ST_NEXT(s) ((uint32_t)((s)&ST_MAX_TASKS))
#define ST_TASKS(s) ((uint32_t)(((s) >> ST_NEXT_BITS) & ST_MAX_TASKS))
#define ST_GEN(s) ((uint32_t)((s) >> (ST_NEXT_BITS + ST_TASKS_BITS)))
#define ST_PACK(g, n) ((((uint64_t)(g)&0xFFFFFFu) << (ST_NEXT_BITS + ST_TASKS_BITS)) | ((uint64_t)(n) << ST_NEXT_BITS))

static struct {
    pthread_mutex_t run_lock;   /* one job at a time; a second caller runs its tasks inline */
    pthread_mutex_t sleep_lock; /* guards the condvar sleep */
    pthread_cond_t sleep_cond;
    _Atomic uint64_t state;
    _Atomic int64_t done;
    _Atomic int n_sleeping;
    _Atomic int shutdown;
    task_fn fn; /* written before state is published, read only after a task is claimed */
    void *ctx;
    unsigned mxcsr; /* the caller's float environment (FTZ/DAZ, rounding), applied by the workers */
    pthread_t *threads;
    int n_workers;      /* running workers */
    int want_threads;   /* total threads including the caller */
    int64_t spin_ns;    /* how long an idle worker spins before sleeping */
} pool = {
    .run_lock = PTHREAD_MUTEX_INITIALIZER,
    .sleep_lock = PTHREAD_MUTEX_INITIALIZER,
    .sleep_cond = PTHREAD_COND_INITIALIZER,
    .want_threads = 1,
    .spin_ns = 100000,
};

static pthread_mutex_t config_lock = PTHREAD_MUTEX_INITIALIZER;

LPU_INLINE void cpu_relax(void) {
#if LPU_X86
    _mm_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void run_claimed_tasks(void) {
    for (;;) {
        uint64_t s = atomic_load_explicit(&pool.state, memory_order_acquire);
        if (ST_NEXT(s) >= ST_TASKS(s)) return;
        if (!atomic_compare_exchange_weak_explicit(&pool.state, &s, s + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        /* The job cannot complete (and its fields cannot change) before this task is counted done. */
#if LPU_X86
        if (_mm_getcsr() != pool.mxcsr) _mm_setcsr(pool.mxcsr); /* the same float results on every thread */
#endif
        pool.fn(pool.ctx, (int64_t)ST_NEXT(s));
        atomic_fetch_add_explicit(&pool.done, 1, memory_order_release);
    }
}

static void *worker_main(void *arg) {
    (void)arg;
    uint32_t seen = ST_GEN(atomic_load_explicit(&pool.state, memory_order_acquire));
    for (;;) {
        int64_t idle_since = now_ns();
        unsigned spins = 0;
        for (;;) {
            if (atomic_load_explicit(&pool.shutdown, memory_order_acquire)) return NULL;
            uint64_t s = atomic_load_explicit(&pool.state, memory_order_acquire);
            if (ST_GEN(s) != seen) {
                seen = ST_GEN(s);
                break;
            }
            cpu_relax();
            if ((++spins & 63u) == 0 && now_ns() - idle_since > pool.spin_ns) {
                pthread_mutex_lock(&pool.sleep_lock);
                atomic_fetch_add_explicit(&pool.n_sleeping, 1, memory_order_seq_cst);
                while (ST_GEN(atomic_load_explicit(&pool.state, memory_order_seq_cst)) == seen &&
                       !atomic_load_explicit(&pool.shutdown, memory_order_seq_cst))
                    pthread_cond_wait(&pool.sleep_cond, &pool.sleep_lock);
                atomic_fetch_sub_explicit(&pool.n_sleeping, 1, memory_order_seq_cst);
                pthread_mutex_unlock(&pool.sleep_lock);
                idle_since = now_ns();
            }
        }
        run_claimed_tasks();
    }
}

/* Called with config_lock and run_lock held. */
static void pool_stop_workers(void) {
    if (pool.n_workers == 0) return;
    atomic_store_explicit(&pool.shutdown, 1, memory_order_seq_cst);
    pthread_mutex_lock(&pool.sleep_lock);
    pthread_cond_broadcast(&pool.sleep_cond);
    pthread_mutex_unlock(&pool.sleep_lock);
    for (int i = 0; i < pool.n_workers; i++) pthread_join(pool.threads[i], NULL);
    free(pool.threads);
    pool.threads = NULL;
    pool.n_workers = 0;
    atomic_store_explicit(&pool.shutdown, 0, memory_order_seq_cst);
}

/* Called with run_lock held. Returns 0 on success. */
static int pool_start_workers(void) {
    int want = pool.want_threads - 1;
    if (want <= 0 || pool.n_workers != 0) return 0; /* callers stop the old workers first */
    pool.threads = (pthread_t *)calloc((size_t)want, sizeof(pthread_t));
    if (pool.threads == NULL) return -1;
    for (int i = 0; i < want; i++) {
        if (pthread_create(&pool.threads[i], NULL, worker_main, NULL) != 0) {
            pool.want_threads = pool.n_workers + 1; /* run with what we have */
            return -1;
        }
        pool.n_workers++;
    }
    return 0;
}

static void pool_atfork_child(void) {
    /* The child has no workers: forget them and start new ones on the first parallel job. */
    pthread_mutex_init(&pool.run_lock, NULL);
    pthread_mutex_init(&pool.sleep_lock, NULL);
    pthread_cond_init(&pool.sleep_cond, NULL);
    pthread_mutex_init(&config_lock, NULL);
    free(pool.threads);
    pool.threads = NULL;
    pool.n_workers = 0;
    atomic_store(&pool.n_sleeping, 0);
    atomic_store(&pool.shutdown, 0);
}

/* Runs fn(ctx, 0..n_tasks-1), each task once, on the pool; returns when all are done. Tasks must write
 * disjoint outputs. Callable without the GIL. */
static void pool_run(task_fn fn, void *ctx, int64_t n_tasks) {
    if (n_tasks <= 0) return;
    if (n_tasks == 1 || pool.want_threads <= 1 || pthread_mutex_trylock(&pool.run_lock) != 0) {
        for (int64_t i = 0; i < n_tasks; i++) fn(ctx, i);
        return;
    }
    if (pool.n_workers == 0) pool_start_workers(); /* first use, or a forked child */
    if (pool.n_workers == 0) {
        pthread_mutex_unlock(&pool.run_lock);
        for (int64_t i = 0; i < n_tasks; i++) fn(ctx, i);
        return;
    }
    /* Our drivers never produce more than ST_MAX_TASKS tasks; any excess runs inline afterwards. */
    int64_t n = n_tasks < (int64_t)ST_MAX_TASKS ? n_tasks : (int64_t)ST_MAX_TASKS;
    pool.fn = fn;
    pool.ctx = ctx;
#if LPU_X86
    pool.mxcsr = _mm_getcsr();
#endif
    atomic_store_explicit(&pool.done, 0, memory_order_relaxed);
    uint64_t s = atomic_load_explicit(&pool.state, memory_order_relaxed);
    atomic_store_explicit(&pool.state, ST_PACK(ST_GEN(s) + 1u, (uint64_t)n), memory_order_seq_cst);
    if (atomic_load_explicit(&pool.n_sleeping, memory_order_seq_cst) > 0) {
        pthread_mutex_lock(&pool.sleep_lock);
        pthread_cond_broadcast(&pool.sleep_cond);
        pthread_mutex_unlock(&pool.sleep_lock);
    }
    run_claimed_tasks();
    unsigned spins = 0;
    while (atomic_load_explicit(&pool.done, memory_order_acquire) < n) {
        cpu_relax();
        if ((++spins & 1023u) == 0) sched_yield(); /* a worker may have been descheduled */
    }
    pthread_mutex_unlock(&pool.run_lock);
    for (int64_t i = n; i < n_tasks; i++) fn(ctx, i);
}

static int pool_set_threads(int n) {
    if (n < 1) n = 1;
    if (n > 256) n = 256;
    pthread_mutex_lock(&config_lock);
    pthread_mutex_lock(&pool.run_lock);
    pool_stop_workers();
    pool.want_threads = n;
    int rc = pool_start_workers();
    pthread_mutex_unlock(&pool.run_lock);
    pthread_mutex_unlock(&config_lock);
    return rc;
}

/* Set by a task that could not get scratch memory; the call then raises MemoryError. */
static _Atomic int scratch_failed = 0;

/* Thread-local scratch, grown on demand and kept for the thread's life (workers are persistent). */
static __thread void *tl_scratch = NULL;
static __thread size_t tl_scratch_bytes = 0;

static void *scratch(size_t bytes) {
    if (bytes > tl_scratch_bytes) {
        free(tl_scratch);
        size_t want = bytes + (bytes >> 2) + 4096;
        tl_scratch = aligned_alloc(64, (want + 63) & ~(size_t)63);
        tl_scratch_bytes = tl_scratch ? want : 0;
        if (tl_scratch == NULL) atomic_store(&scratch_failed, 1);
    }
    return tl_scratch;
}

/* Number of tasks for `work` units with a minimum of `min_unit` work per task. */
static int64_t split_tasks(int64_t work, int64_t min_unit, int64_t max_tasks) {
    int64_t t = work / (min_unit > 0 ? min_unit : 1);
    if (t < 1) t = 1;
    if (t > max_tasks) t = max_tasks;
    return t;
}

/* ------------------------------------------------------------------------------------------------------------
 * ISA dispatch
 * ------------------------------------------------------------------------------------------------------------ */

enum { ISA_GENERIC = 0, ISA_AVX2 = 1 };
static int active_isa = ISA_GENERIC;
static int best_isa = ISA_GENERIC;

static void detect_isa(void) {
#if LPU_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        best_isa = ISA_AVX2;
#endif
    active_isa = best_isa;
    const char *env = getenv("LPU_NATIVE_ISA");
    if (env != NULL && strcmp(env, "generic") == 0) active_isa = ISA_GENERIC;
}

/* ------------------------------------------------------------------------------------------------------------
 * fp16 <-> fp32 (portable; F16C in the AVX2 paths gives the same bits for non-NaN values)
 * ------------------------------------------------------------------------------------------------------------ */

static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while ((man & 0x400u) == 0);
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FFu) << 13);
        }
    } else if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13) | (man ? 0x400000u : 0u);
    } else {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Round to nearest even, overflow to infinity, as numpy's float32 -> float16 cast. */
static inline uint16_t f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t a = x & 0x7FFFFFFFu;
    if (a >= 0x7F800000u) {
        if (a == 0x7F800000u) return sign | 0x7C00u;
        return (uint16_t)(sign | 0x7E00u | ((a & 0x7FFFFFu) >> 13)); /* quiet NaN, payload kept (as F16C) */
    }
    if (a >= 0x477FF000u) return sign | 0x7C00u; /* >= 65520 rounds to infinity */
    if (a < 0x38800000u) {                         /* below 2^-14: half subnormal or zero */
        if (a <= 0x33000000u) return sign;         /* <= 2^-25 rounds to zero (ties to even) */
        uint32_t e = a >> 23;
        uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126u - e;
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = a - (112u << 23);
    r = (r + 0xFFFu + ((r >> 13) & 1u)) >> 13;
    return (uint16_t)(sign | r);
}

/* ------------------------------------------------------------------------------------------------------------
 * exp for 8 lanes: one sequence of float32 operations (no FMA), written lane-wise for the portable path and
 * with intrinsics for AVX2. Inputs below -87.33654 give 0, above 88.72284 give +inf; relative error ~2 ulp.
 * ------------------------------------------------------------------------------------------------------------ */

#define EXP_LO (-87.33654f)
#define EXP_HI (88.72284f)
#define EXP_CLAMP_HI 88.0f
#define EXP_LOG2E 1.44269504088896341f
#define EXP_C1 0.693359375f
#define EXP_C2 (-2.12194440e-4f)
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

static inline float exp_lane(float x) {
    float xc = x < EXP_LO ? EXP_LO : x;
    xc = xc > EXP_CLAMP_HI ? EXP_CLAMP_HI : xc;
    float n = nearbyintf(xc * EXP_LOG2E);
    float r = xc - n * EXP_C1;
    r = r - n * EXP_C2;
    float z = r * r;
    float p = EXP_P0;
    p = p * r + EXP_P1;
    p = p * r + EXP_P2;
    p = p * r + EXP_P3;
    p = p * r + EXP_P4;
    p = p * r + EXP_P5;
    float y = p * z + r;
    y = y + 1.0f;
    int32_t ni = (int32_t)n;
    uint32_t bits = (uint32_t)(ni + 127) << 23;
    float pow2;
    memcpy(&pow2, &bits, 4);
    y = y * pow2;
    if (x < EXP_LO) y = 0.0f;
    if (x > EXP_HI) y = INFINITY;
    if (x != x) y = x;
    return y;
}

#if LPU_X86
LPU_AVX2 LPU_INLINE __m256 exp8_avx2(__m256 x) {
    __m256 xc = _mm256_max_ps(x, _mm256_set1_ps(EXP_LO));
    xc = _mm256_min_ps(xc, _mm256_set1_ps(EXP_CLAMP_HI));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(EXP_LOG2E)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_sub_ps(xc, _mm256_mul_ps(n, _mm256_set1_ps(EXP_C1)));
    r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(EXP_C2)));
    __m256 z = _mm256_mul_ps(r, r);
    __m256 p = _mm256_set1_ps(EXP_P0);
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(EXP_P1));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(EXP_P2));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(EXP_P3));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(EXP_P4));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(EXP_P5));
    __m256 y = _mm256_add_ps(_mm256_mul_ps(p, z), r);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    __m256i ni = _mm256_cvtps_epi32(n); /* n is integral: exact */
    __m256 pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127)), 23));
    y = _mm256_mul_ps(y, pow2);
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(EXP_LO), _CMP_LT_OQ));
    y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, _mm256_set1_ps(EXP_HI), _CMP_GT_OQ));
    y = _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    return y;
}

/* Sum of 8 lanes in the fixed tree ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)). */
LPU_AVX2 LPU_INLINE float hsum8_avx2(__m256 v) {
    __m256 h = _mm256_hadd_ps(v, v);   /* [l0+l1, l2+l3, ., . | l4+l5, l6+l7, ., .] */
    h = _mm256_hadd_ps(h, h);          /* [(l0+l1)+(l2+l3), ... | (l4+l5)+(l6+l7), ...] */
    __m128 lo = _mm256_castps256_ps128(h);
    __m128 hi = _mm256_extractf128_ps(h, 1);
    return _mm_cvtss_f32(_mm_add_ss(lo, hi));
}

LPU_AVX2 LPU_INLINE float hmax8_avx2(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}
#endif

static inline float hsum8_lanes(const float *l) {
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

/* ------------------------------------------------------------------------------------------------------------
 * int8 GEMM: acc[m][n] = sum_k a[m][k] * w[n][k], exact in int32, for one or several weight matrices that read
 * the same activations (linear_s8_multi: q/k/v, gate/up) in one pool job.
 *
 * M = 1 (decode GEMV), AVX2: the sign trick, maddubs(|w|, sign(a, w)) then madd with ones; |-128| = 0x80 = 128
 * as an unsigned byte, so a weight byte of -128 is exact, and pair sums stay within 2 * 128 * 127 = 32512 < 32767
 * (activations are in [-127, 127]; a call whose activations hold -128 takes the portable kernel).
 *
 * M > 1, AVX2: int16 multiply-adds (vpmaddwd) on weights split in registers. A 32-byte weight vector read as 16
 * int16 lanes gives its even bytes as (x << 8) >> 8 and its odd bytes as x >> 8 (arithmetic shifts): 3 shifts
 * per 32 weights, shared by 8 activation rows, and the weights are still read in place (no copy of w, not even
 * a transient one). The activations are packed once per call (transient, thread-local) into the matching
 * layout: per 8-row chunk and 32-wide k-block, each row's 16 even then 16 odd values as int16. vpmaddwd of
 * int16 values in [-128, 127] is exact (pair sums <= 2 * 128 * 128), so every int8 value, -128 included, is
 * exact, and int32 accumulation is exact up to K = 131071.
 * Why not the sign trick there too: per 32 multiply-adds both schemes issue 2 multiplies (vpmaddubsw + vpmaddwd,
 * or 2 x vpmaddwd) and 2 other ops, but on Zen 3 vpsignb shares a pipe with the multipliers while vpaddd can
 * issue on all four: the int16 loop measured ~25 multiply-adds per cycle against ~20 (docs/kernels.md).
 * ------------------------------------------------------------------------------------------------------------ */

/* One weight matrix of a call. */
typedef struct {
    const int8_t *w;
    int64_t ldw, N;
    int32_t *out_i; /* gemm_s8s8_s32 */
    float *out_f;   /* linear_s8 */
    int64_t ldo;    /* in elements */
    const float *ws, *bias;
    int64_t nb, n_nblocks; /* weight rows per task and the number of such blocks */
    int64_t task0;         /* the matrix's first task */
} gemm_mat;

enum { GEMM_GENERIC = 0, GEMM_GEMV = 1, GEMM_I16 = 2 };

typedef struct {
    const int8_t *a;
    int64_t lda, M, K;
    const float *xs;
    int kind;
    int64_t mb, n_mblocks; /* activation rows per task (GEMV, generic) or 8-row chunks per task (I16) */
    const int16_t *ap;     /* I16: packed activations, MC chunks x KB k-blocks x 512 bytes */
    int64_t KB, kcb, MC;   /* I16: 32-wide k-blocks, k-blocks per K chunk, 8-row chunks */
    int n_mats;
    gemm_mat *mats;
    int64_t n_tasks;
} gemm_ctx;

#define I16_ROWS 8        /* activation rows per packed chunk */
#define I16_KB_ELEMS 256  /* int16 per chunk and k-block: 8 rows x 32 */
#define I16_KC_MAX 32     /* k-blocks per K chunk (1024 values): a chunk's activations (16 KiB) stay in L1 */
#define I16_MAX_K 131071  /* K * 128 * 128 < 2^31: exact for every int8 value */

/* Writes one MR x NR block of results. */
static inline void gemm_store(const gemm_ctx *c, const gemm_mat *mt, int64_t m0, int64_t n0, int mr, int nr,
                              const int32_t *acc, int acc_ld) {
    for (int i = 0; i < mr; i++) {
        int64_t m = m0 + i;
        if (mt->out_i != NULL) {
            int32_t *o = mt->out_i + m * mt->ldo + n0;
            for (int j = 0; j < nr; j++) o[j] = acc[i * acc_ld + j];
        } else {
            float *o = mt->out_f + m * mt->ldo + n0;
            float xs = c->xs[m];
            for (int j = 0; j < nr; j++) {
                float y = ((float)acc[i * acc_ld + j] * xs) * mt->ws[n0 + j];
                if (mt->bias != NULL) y = y + mt->bias[n0 + j];
                o[j] = y;
            }
        }
    }
}

static void gemm_block_generic(const gemm_ctx *c, const gemm_mat *mt, int64_t m0, int64_t m1, int64_t n0,
                               int64_t n1) {
    const int64_t K = c->K;
    for (int64_t m = m0; m < m1; m++) {
        const int8_t *a = c->a + m * c->lda;
        for (int64_t n = n0; n < n1; n += 4) {
            int nr = (int)(n1 - n < 4 ? n1 - n : 4);
            int32_t acc[4] = {0, 0, 0, 0};
            for (int j = 0; j < nr; j++) {
                const int8_t *w = mt->w + (n + j) * mt->ldw;
                int32_t s = 0;
                for (int64_t k = 0; k < K; k++) s += (int32_t)a[k] * (int32_t)w[k];
                acc[j] = s;
            }
            gemm_store(c, mt, m, n, 1, nr, acc, 4);
        }
    }
}

#if LPU_X86
/* One 32-byte step of the sign trick for activation vector av against weight vector wv (|wv| in wa). */
#define S8_DOT(acc, av, wv, wa) \
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(wa, _mm256_sign_epi8(av, wv)), ones))

/* GEMV: one activation row against one weight row, K streamed in order (4 accumulators, 128 bytes a step)
 * with a software prefetch GEMV_PF bytes ahead. Rows are taken one after the other, so a task reads its block
 * of the weight matrix as one sequential stream: measured faster from DRAM than interleaving several rows. */
#define GEMV_PF 1024
LPU_AVX2 static int32_t gemv_row_avx2(const int8_t *a, const int8_t *w, int64_t K) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int64_t k = 0;
#define GEMV_STEP(acc, off)                                                              \
    do {                                                                                 \
        const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + k + (off)));          \
        const __m256i av = _mm256_loadu_si256((const __m256i *)(a + k + (off)));          \
        S8_DOT(acc, av, wv, _mm256_abs_epi8(wv));                                        \
    } while (0)
    for (; k + 128 <= K; k += 128) {
        _mm_prefetch((const char *)(w + k + GEMV_PF), _MM_HINT_T0);
        _mm_prefetch((const char *)(w + k + GEMV_PF + 64), _MM_HINT_T0);
        GEMV_STEP(acc0, 0);
        GEMV_STEP(acc1, 32);
        GEMV_STEP(acc2, 64);
        GEMV_STEP(acc3, 96);
    }
    for (; k + 32 <= K; k += 32) GEMV_STEP(acc0, 0);
#undef GEMV_STEP
    __m256i t = _mm256_add_epi32(_mm256_add_epi32(acc0, acc1), _mm256_add_epi32(acc2, acc3));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    s4 = _mm_hadd_epi32(s4, s4);
    s4 = _mm_hadd_epi32(s4, s4);
    int32_t v = _mm_cvtsi128_si32(s4);
    for (; k < K; k++) v += (int32_t)a[k] * (int32_t)w[k];
    return v;
}

LPU_AVX2 static void gemv_block_avx2(const gemm_ctx *c, const gemm_mat *mt, int64_t m, int64_t n0, int64_t n1) {
    const int8_t *a = c->a + m * c->lda;
    const int8_t *first = mt->w + n0 * mt->ldw; /* the stream's start: nothing prefetched it yet */
    for (int64_t off = 0; off < GEMV_PF && off < (n1 - n0) * mt->ldw; off += 64)
        _mm_prefetch((const char *)(first + off), _MM_HINT_T0);
    for (int64_t n = n0; n < n1; n++) {
        int32_t acc = gemv_row_avx2(a, mt->w + n * mt->ldw, c->K);
        gemm_store(c, mt, m, n, 1, 1, &acc, 1);
    }
}

/* Packs `rows` (<= 8) activation rows into one chunk: per k-block, row r's 16 even then 16 odd values as int16
 * (the split of the weights below); rows past `rows` are zeros. */
LPU_AVX2 static void i16_pack_chunk_avx2(const int8_t *a, int64_t lda, int64_t rows, int64_t KB, int16_t *dst) {
    for (int64_t r = 0; r < I16_ROWS; r++) {
        __m256i *d = (__m256i *)dst + 2 * r;
        if (r < rows) {
            const int8_t *row = a + r * lda;
            for (int64_t kb = 0; kb < KB; kb++, d += I16_KB_ELEMS / 16) {
                __m256i raw = _mm256_loadu_si256((const __m256i *)(row + kb * 32));
                _mm256_store_si256(d, _mm256_srai_epi16(_mm256_slli_epi16(raw, 8), 8));
                _mm256_store_si256(d + 1, _mm256_srai_epi16(raw, 8));
            }
        } else {
            for (int64_t kb = 0; kb < KB; kb++, d += I16_KB_ELEMS / 16) {
                _mm256_store_si256(d, _mm256_setzero_si256());
                _mm256_store_si256(d + 1, _mm256_setzero_si256());
            }
        }
    }
}

/* [sum(c0), ..., sum(c7)]: the 8 lanes of each accumulator added (exact: every partial sum is a sum of a subset
 * of the products, within int32 like the total). */
LPU_AVX2 LPU_INLINE __m256i hsum8x8_epi32(__m256i c0, __m256i c1, __m256i c2, __m256i c3, __m256i c4, __m256i c5,
                                          __m256i c6, __m256i c7) {
    __m256i s0123 = _mm256_hadd_epi32(_mm256_hadd_epi32(c0, c1), _mm256_hadd_epi32(c2, c3));
    __m256i s4567 = _mm256_hadd_epi32(_mm256_hadd_epi32(c4, c5), _mm256_hadd_epi32(c6, c7));
    return _mm256_add_epi32(_mm256_permute2x128_si256(s0123, s4567, 0x20),
                            _mm256_permute2x128_si256(s0123, s4567, 0x31));
}

/* The inner loop is inline asm: compiled from intrinsics, GCC 12 spilled accumulators of this loop to the stack
 * (and did the same to the former 4 x 2 kernel). One k-block: split 32 weights into even/odd int16, then per
 * activation row two vpmaddwd (from the packed chunk in L1) and two vpaddd. */
#define I16_SPLIT                  \
    "vmovdqu (%[w]), %[raw]\n\t"   \
    "vpsllw $8, %[raw], %[we]\n\t" \
    "vpsraw $8, %[raw], %[wo]\n\t" \
    "vpsraw $8, %[we], %[we]\n\t"
#define I16_ROW(off, c)                                \
    "vpmaddwd " #off "(%[a]), %[we], %[t0]\n\t"        \
    "vpmaddwd " #off "+32(%[a]), %[wo], %[t1]\n\t"     \
    "vpaddd %[t0], %[" #c "], %[" #c "]\n\t"           \
    "vpaddd %[t1], %[" #c "], %[" #c "]\n\t"
#define I16_TEMPS [raw] "=&x"(raw), [we] "=&x"(we), [wo] "=&x"(wo), [t0] "=&x"(t0), [t1] "=&x"(t1)
#define I16_INPUTS(a, w) \
    [a] "r"(a), [w] "r"(w), [am] "m"(*(const char(*)[512])(const void *)(a)), [wm] "m"(*(const char(*)[32])(w))

/* Exact dot products of the 8 rows of a packed chunk (a: at the first k-block) with one weight row over nkb
 * k-blocks; with PF, the 64-byte lines of pf .. pf + 32 * nkb are prefetched on the way (the next segment of
 * weights, on the first pass over a block that comes from memory). */
LPU_AVX2 LPU_INLINE __m256i i16_kernel8_tpl(const int PF, const int16_t *a, const int8_t *w, int64_t nkb,
                                            const int8_t *pf) {
    __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
    __m256i raw, we, wo, t0, t1;
    for (int64_t i = 0; i < nkb; i++, a += I16_KB_ELEMS, w += 32) {
        if (PF && (i & 1) == 0) _mm_prefetch((const char *)(pf + i * 32), _MM_HINT_T0);
        __asm__(I16_SPLIT I16_ROW(0, c0) I16_ROW(64, c1) I16_ROW(128, c2) I16_ROW(192, c3) I16_ROW(256, c4)
                    I16_ROW(320, c5) I16_ROW(384, c6) I16_ROW(448, c7)
                : [c0] "+x"(c0), [c1] "+x"(c1), [c2] "+x"(c2), [c3] "+x"(c3), [c4] "+x"(c4), [c5] "+x"(c5),
                  [c6] "+x"(c6), [c7] "+x"(c7), I16_TEMPS
                : I16_INPUTS(a, w));
    }
    return hsum8x8_epi32(c0, c1, c2, c3, c4, c5, c6, c7);
}

/* The same for the first 4 rows of a chunk (a chunk of 2 to 4 valid rows); lanes 4..7 of the result are 0. */
LPU_AVX2 LPU_INLINE __m256i i16_kernel4_tpl(const int PF, const int16_t *a, const int8_t *w, int64_t nkb,
                                            const int8_t *pf) {
    __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0;
    __m256i raw, we, wo, t0, t1;
    for (int64_t i = 0; i < nkb; i++, a += I16_KB_ELEMS, w += 32) {
        if (PF && (i & 1) == 0) _mm_prefetch((const char *)(pf + i * 32), _MM_HINT_T0);
        __asm__(I16_SPLIT I16_ROW(0, c0) I16_ROW(64, c1) I16_ROW(128, c2) I16_ROW(192, c3)
                : [c0] "+x"(c0), [c1] "+x"(c1), [c2] "+x"(c2), [c3] "+x"(c3), I16_TEMPS
                : I16_INPUTS(a, w));
    }
    const __m256i z = _mm256_setzero_si256();
    return hsum8x8_epi32(c0, c1, c2, c3, z, z, z, z);
}

LPU_AVX2 static __m256i i16_kernel8(const int16_t *a, const int8_t *w, int64_t nkb) {
    return i16_kernel8_tpl(0, a, w, nkb, NULL);
}
LPU_AVX2 static __m256i i16_kernel8_pf(const int16_t *a, const int8_t *w, int64_t nkb, const int8_t *pf) {
    return i16_kernel8_tpl(1, a, w, nkb, pf);
}
LPU_AVX2 static __m256i i16_kernel4(const int16_t *a, const int8_t *w, int64_t nkb) {
    return i16_kernel4_tpl(0, a, w, nkb, NULL);
}
LPU_AVX2 static __m256i i16_kernel4_pf(const int16_t *a, const int8_t *w, int64_t nkb, const int8_t *pf) {
    return i16_kernel4_tpl(1, a, w, nkb, pf);
}

/* Writes the results of one chunk: tile[j * 8 + i] = acc of activation row m0 + i and weight row n0 + j. 8 x 8
 * blocks are transposed so that each output row gets 8 contiguous values; the float arithmetic is gemm_store's
 * (((float)acc * xs) * ws) + bias, lane by lane, so the results are the same bits. */
LPU_AVX2 static void i16_store_avx2(const gemm_ctx *c, const gemm_mat *mt, const int32_t *tile, int64_t m0,
                                    int rows, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n += 8) {
        const int cols = (int)(n1 - n < 8 ? n1 - n : 8);
        const int32_t *tb = tile + (n - n0) * I16_ROWS;
        __m256i v[8];
        for (int j = 0; j < 8; j++)
            v[j] = j < cols ? _mm256_loadu_si256((const __m256i *)(tb + j * I16_ROWS)) : _mm256_setzero_si256();
        __m256i t0 = _mm256_unpacklo_epi32(v[0], v[1]), t1 = _mm256_unpackhi_epi32(v[0], v[1]);
        __m256i t2 = _mm256_unpacklo_epi32(v[2], v[3]), t3 = _mm256_unpackhi_epi32(v[2], v[3]);
        __m256i t4 = _mm256_unpacklo_epi32(v[4], v[5]), t5 = _mm256_unpackhi_epi32(v[4], v[5]);
        __m256i t6 = _mm256_unpacklo_epi32(v[6], v[7]), t7 = _mm256_unpackhi_epi32(v[6], v[7]);
        __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
        __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
        __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
        __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
        __m256i r[8];
        r[0] = _mm256_permute2x128_si256(u0, u4, 0x20);
        r[1] = _mm256_permute2x128_si256(u1, u5, 0x20);
        r[2] = _mm256_permute2x128_si256(u2, u6, 0x20);
        r[3] = _mm256_permute2x128_si256(u3, u7, 0x20);
        r[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
        r[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
        r[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
        r[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
        for (int i = 0; i < rows; i++) {
            const int64_t m = m0 + i;
            if (cols < 8) {
                int32_t acc[8];
                _mm256_storeu_si256((__m256i *)acc, r[i]);
                gemm_store(c, mt, m, n, 1, cols, acc, 8);
            } else if (mt->out_i != NULL) {
                _mm256_storeu_si256((__m256i *)(mt->out_i + m * mt->ldo + n), r[i]);
            } else {
                __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(r[i]), _mm256_set1_ps(c->xs[m]));
                y = _mm256_mul_ps(y, _mm256_loadu_ps(mt->ws + n));
                if (mt->bias != NULL) y = _mm256_add_ps(y, _mm256_loadu_ps(mt->bias + n));
                _mm256_storeu_ps(mt->out_f + m * mt->ldo + n, y);
            }
        }
    }
}

/* Adds the K tail (K not a multiple of 32) to a chunk's tile in scalar C (integers: exact in any order). */
static void i16_tail(const gemm_ctx *c, const gemm_mat *mt, int32_t *tile, int64_t m0, int rows, int64_t n0,
                     int64_t n1) {
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *w = mt->w + n * mt->ldw;
        for (int i = 0; i < rows; i++) {
            const int8_t *a = c->a + (m0 + i) * c->lda;
            int32_t v = 0;
            for (int64_t k = c->KB * 32; k < c->K; k++) v += (int32_t)a[k] * (int32_t)w[k];
            tile[(n - n0) * I16_ROWS + i] += v;
        }
    }
}

/* One K chunk [kb0, kb0 + nkb) of one packed chunk against weight rows [n0, n1) into tile (= or +=). With
 * prefetch, the next weight segment is prefetched while one is computed: on the block's first pass (weights from
 * memory), and on every pass when K is split (the segments are then a row stride apart, which the hardware
 * prefetcher follows less well than one contiguous stream). */
LPU_AVX2 static void i16_chunk_avx2(const gemm_mat *mt, const int16_t *ak, int rows, int64_t kb0, int64_t nkb,
                                    int64_t n0, int64_t n1, int prefetch, int32_t *tile) {
    const int64_t ldw = mt->ldw;
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *wr = mt->w + n * ldw + kb0 * 32;
        __m256i s;
        if (prefetch) {
            const int8_t *pf = n + 1 < n1 ? wr + ldw : mt->w + n0 * ldw + (kb0 + nkb) * 32; /* never faults */
            s = rows > 4 ? i16_kernel8_pf(ak, wr, nkb, pf) : i16_kernel4_pf(ak, wr, nkb, pf);
        } else {
            s = rows > 4 ? i16_kernel8(ak, wr, nkb) : i16_kernel4(ak, wr, nkb);
        }
        __m256i *tp = (__m256i *)(tile + (n - n0) * I16_ROWS);
        _mm256_storeu_si256(tp, kb0 == 0 ? s : _mm256_add_epi32(_mm256_loadu_si256(tp), s));
    }
}

/* A task: the packed chunks [mc0, mc1) of activation rows against weight rows [n0, n1), a block of weights that
 * stays in L2 (the first chunk's pass brings it from memory). K is walked in chunks of at most I16_KC_MAX
 * k-blocks so that a chunk's packed activations (16 KiB) stay in L1 while the weight rows stream past. With one
 * K chunk, each activation chunk is finished and stored in turn; with several, K chunks are the outer loop (the
 * weights of one K chunk, not of all K, have to stay in L2, so blocks can have more rows and the activations are
 * re-read less often) and the tile holds the whole task. */
LPU_AVX2 static void i16_block_avx2(const gemm_ctx *c, const gemm_mat *mt, int64_t mc0, int64_t mc1, int64_t n0,
                                    int64_t n1) {
    const int64_t KB = c->KB, nn = n1 - n0, tile_stride = nn * I16_ROWS;
    const int one_chunk = KB <= c->kcb;
    int32_t *tiles = (int32_t *)scratch((size_t)((one_chunk ? 1 : mc1 - mc0) * tile_stride + 8) * sizeof(int32_t));
    if (tiles == NULL) return;
#define ROWS_OF(mc) ((int)(c->M - (mc)*I16_ROWS < I16_ROWS ? c->M - (mc)*I16_ROWS : I16_ROWS))
    if (one_chunk) {
        for (int64_t mc = mc0; mc < mc1; mc++) {
            const int rows = ROWS_OF(mc);
            if (KB > 0)
                i16_chunk_avx2(mt, c->ap + mc * KB * I16_KB_ELEMS, rows, 0, KB, n0, n1, mc == mc0, tiles);
            else /* K < 32: all of it is the tail */
                memset(tiles, 0, (size_t)tile_stride * sizeof(int32_t));
            if (KB * 32 < c->K) i16_tail(c, mt, tiles, mc * I16_ROWS, rows, n0, n1);
            i16_store_avx2(c, mt, tiles, mc * I16_ROWS, rows, n0, n1);
        }
        return;
    }
    for (int64_t kb0 = 0; kb0 < KB; kb0 += c->kcb) {
        const int64_t nkb = KB - kb0 < c->kcb ? KB - kb0 : c->kcb;
        for (int64_t mc = mc0; mc < mc1; mc++)
            i16_chunk_avx2(mt, c->ap + (mc * KB + kb0) * I16_KB_ELEMS, ROWS_OF(mc), kb0, nkb, n0, n1, 1,
                           tiles + (mc - mc0) * tile_stride);
    }
    for (int64_t mc = mc0; mc < mc1; mc++) {
        int32_t *tile = tiles + (mc - mc0) * tile_stride;
        if (KB * 32 < c->K) i16_tail(c, mt, tile, mc * I16_ROWS, ROWS_OF(mc), n0, n1);
        i16_store_avx2(c, mt, tile, mc * I16_ROWS, ROWS_OF(mc), n0, n1);
    }
#undef ROWS_OF
}
#endif

/* Does any activation byte equal -128? The GEMV's sign trick needs a in [-127, 127] (our quantizers never
 * produce -128); a call that has one takes the portable kernel, exact for every int8 value. */
static int has_int8_min(const int8_t *a, int64_t M, int64_t K, int64_t lda) {
    for (int64_t m = 0; m < M; m++) {
        const int8_t *row = a + m * lda;
        int found = 0;
        for (int64_t k = 0; k < K; k++) found |= row[k] == -128;
        if (found) return 1;
    }
    return 0;
}

static void gemm_task(void *vctx, int64_t t) {
    const gemm_ctx *c = (const gemm_ctx *)vctx;
    int i = 0;
    while (i + 1 < c->n_mats && t >= c->mats[i + 1].task0) i++;
    const gemm_mat *mt = &c->mats[i];
    const int64_t local = t - mt->task0;
    const int64_t ni = local / c->n_mblocks, mi = local % c->n_mblocks;
    const int64_t n0 = ni * mt->nb, n1 = n0 + mt->nb < mt->N ? n0 + mt->nb : mt->N;
#if LPU_X86
    if (c->kind == GEMM_I16) {
        int64_t mc0 = mi * c->mb, mc1 = mc0 + c->mb < c->MC ? mc0 + c->mb : c->MC;
        i16_block_avx2(c, mt, mc0, mc1, n0, n1);
        return;
    }
    if (c->kind == GEMM_GEMV) {
        gemv_block_avx2(c, mt, mi, n0, n1);
        return;
    }
#endif
    int64_t m0 = mi * c->mb, m1 = m0 + c->mb < c->M ? m0 + c->mb : c->M;
    gemm_block_generic(c, mt, m0, m1, n0, n1);
}

/* Thread-local buffer for the packed activations of the calling thread (tasks use scratch()); kept between
 * calls up to PACK_KEEP bytes. */
#define PACK_KEEP (16u << 20)
static __thread void *tl_pack = NULL;
static __thread size_t tl_pack_bytes = 0;

#if LPU_X86
static void *pack_buffer(size_t bytes) {
    if (bytes > tl_pack_bytes) {
        free(tl_pack);
        size_t want = (bytes + 4095) & ~(size_t)4095;
        tl_pack = aligned_alloc(64, want);
        tl_pack_bytes = tl_pack ? want : 0;
    }
    return tl_pack;
}
#endif

static void pack_release(void) {
    if (tl_pack_bytes > PACK_KEEP) {
        free(tl_pack);
        tl_pack = NULL;
        tl_pack_bytes = 0;
    }
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Splits every matrix into blocks of weight rows (and the activations into blocks of rows) so that there are
 * enough tasks for the dynamic split to balance (4 per thread), each weight block fitting in L2 (I16). */
static void gemm_plan(gemm_ctx *c) {
    const int64_t threads = pool.want_threads, M = c->M, K = c->K;
    int64_t total_n = 0;
    for (int i = 0; i < c->n_mats; i++) total_n += c->mats[i].N;
    int64_t nb_cap, mb;
    if (c->kind == GEMM_I16) {
        c->KB = K / 32;
        c->kcb = c->KB > 0 ? ceil_div(c->KB, ceil_div(c->KB, I16_KC_MAX)) : 1;
        c->MC = ceil_div(M, I16_ROWS);
        /* A block of weights: 256 KiB of the 512 KiB L2 for one K chunk (all of K when it is one chunk). */
        const int64_t kc_bytes = c->KB > c->kcb ? c->kcb * 32 : (K > 0 ? K : 1);
        nb_cap = (256 * 1024) / kc_bytes;
        if (nb_cap < 16) nb_cap = 16;
        mb = c->MC;
        if (c->KB > c->kcb) { /* several K chunks: the task's tile (mb x 8 x nb int32) stays within 128 KiB */
            int64_t tile_cap = (128 * 1024) / (nb_cap * I16_ROWS * 4);
            if (mb > tile_cap) mb = tile_cap > 1 ? tile_cap : 1;
        }
        for (;;) {
            int64_t tasks = 0;
            for (int i = 0; i < c->n_mats; i++) tasks += ceil_div(c->mats[i].N, nb_cap);
            tasks *= ceil_div(c->MC, mb);
            if (tasks >= 4 * threads) break;
            if (mb > 8) /* blocks of at least 64 activation rows */
                mb = ceil_div(mb, 2);
            else if (nb_cap > 16)
                nb_cap = nb_cap / 2 > 16 ? nb_cap / 2 : 16;
            else
                break;
        }
        c->mb = mb;
        c->n_mblocks = ceil_div(c->MC, mb);
    } else {
        /* GEMV (and the portable kernel): 8 tasks per thread over all matrices' rows, at least 16 rows each. */
        nb_cap = ceil_div(total_n, threads * 8);
        if (nb_cap < 16) nb_cap = 16;
        c->mb = M <= 64 ? (M > 0 ? M : 1) : 64;
        c->n_mblocks = ceil_div(M, c->mb);
    }
    int64_t tasks = 0;
    for (int i = 0; i < c->n_mats; i++) {
        gemm_mat *mt = &c->mats[i];
        mt->task0 = tasks;
        mt->n_nblocks = mt->N > 0 ? ceil_div(mt->N, nb_cap) : 0;
        mt->nb = mt->n_nblocks > 0 ? ceil_div(mt->N, mt->n_nblocks) : 1; /* balanced blocks */
        tasks += mt->n_nblocks * c->n_mblocks;
    }
    c->n_tasks = tasks;
}

/* Runs the GEMM(s) of c; returns -1 when memory for the packed activations or a task's scratch ran out. */
static int gemm_run(gemm_ctx *c) {
    int64_t total_n = 0;
    for (int i = 0; i < c->n_mats; i++) total_n += c->mats[i].N;
    if (c->M == 0 || total_n == 0) return 0;
    c->kind = GEMM_GENERIC;
    if (active_isa == ISA_AVX2) {
        if (c->M == 1)
            c->kind = has_int8_min(c->a, c->M, c->K, c->lda) ? GEMM_GENERIC : GEMM_GEMV;
        else
            c->kind = c->K > I16_MAX_K && has_int8_min(c->a, c->M, c->K, c->lda) ? GEMM_GENERIC : GEMM_I16;
    }
    gemm_plan(c);
#if LPU_X86
    if (c->kind == GEMM_I16 && c->KB > 0) {
        int16_t *ap = (int16_t *)pack_buffer((size_t)(c->MC * c->KB) * I16_KB_ELEMS * sizeof(int16_t));
        if (ap == NULL) return -1;
        for (int64_t mc = 0; mc < c->MC; mc++) {
            int64_t rows = c->M - mc * I16_ROWS < I16_ROWS ? c->M - mc * I16_ROWS : I16_ROWS;
            i16_pack_chunk_avx2(c->a + mc * I16_ROWS * c->lda, c->lda, rows, c->KB, ap + mc * c->KB * I16_KB_ELEMS);
        }
        c->ap = ap;
    }
#endif
    /* Tiny products are not worth waking a worker. */
    if (c->M * total_n * (c->K + 16) < 64 * 1024) {
        for (int64_t t = 0; t < c->n_tasks; t++) gemm_task(c, t);
    } else {
        pool_run(gemm_task, c, c->n_tasks);
    }
    if (c->kind == GEMM_I16) pack_release();
    return atomic_exchange(&scratch_failed, 0) ? -1 : 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * Row-wise float kernels: quantize, RMSNorm(+quantize), SiLU*up(+quantize).
 * ------------------------------------------------------------------------------------------------------------ */

/* q = clip(rint(x / scale), -127, 127) with scale = amax / 127 (1 for an all-zero row): numpy's arithmetic. */
static void quantize_row_generic(const float *x, int64_t K, int8_t *q, float *scale_out) {
    float amax = 0.0f;
    for (int64_t k = 0; k < K; k++) {
        float v = fabsf(x[k]);
        amax = v > amax ? v : amax;
    }
    float s = amax > 0.0f ? amax / (float)QMAX : 1.0f;
    for (int64_t k = 0; k < K; k++) {
        float r = nearbyintf(x[k] / s);
        r = r < -QMAX ? (float)-QMAX : (r > QMAX ? (float)QMAX : r);
        q[k] = (int8_t)(int)r;
    }
    *scale_out = s;
}

/* Sum of squares with 32 lanes (4 x 8), tails padded with zeros, reduced in a fixed order. */
static float sumsq_generic(const float *x, int64_t K) {
    float acc[32];
    for (int l = 0; l < 32; l++) acc[l] = 0.0f;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32)
        for (int l = 0; l < 32; l++) acc[l] = acc[l] + x[k + l] * x[k + l];
    if (k < K) {
        for (int l = 0; l < 32; l++) {
            float v = k + l < K ? x[k + l] : 0.0f;
            acc[l] = acc[l] + v * v;
        }
    }
    float v8[8];
    for (int l = 0; l < 8; l++) v8[l] = (acc[l] + acc[8 + l]) + (acc[16 + l] + acc[24 + l]);
    return hsum8_lanes(v8);
}

static inline float rms_factor(float sumsq, int64_t K, float eps) {
    float mean = sumsq / (float)K;
    return sqrtf(mean + eps);
}

static void rmsnorm_row_generic(const float *x, const float *w, int64_t K, float eps, float *out) {
    float r = rms_factor(sumsq_generic(x, K), K, eps);
    for (int64_t k = 0; k < K; k++) out[k] = (x[k] / r) * w[k];
}

static void silu_mul_row_generic(const float *g, const float *u, int64_t F, float *out) {
    for (int64_t k = 0; k < F; k++) {
        float e = exp_lane(-g[k]);
        out[k] = (g[k] / (1.0f + e)) * u[k];
    }
}

#if LPU_X86
LPU_AVX2 static void quantize_row_avx2(const float *x, int64_t K, int8_t *q, float *scale_out) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 m0 = _mm256_setzero_ps(), m1 = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        m0 = _mm256_max_ps(m0, _mm256_and_ps(_mm256_loadu_ps(x + k), absmask));
        m1 = _mm256_max_ps(m1, _mm256_and_ps(_mm256_loadu_ps(x + k + 8), absmask));
    }
    float amax = hmax8_avx2(_mm256_max_ps(m0, m1));
    for (; k < K; k++) {
        float v = fabsf(x[k]);
        amax = v > amax ? v : amax;
    }
    float s = amax > 0.0f ? amax / (float)QMAX : 1.0f;
    const __m256 vs = _mm256_set1_ps(s);
    const __m256 lo = _mm256_set1_ps(-(float)QMAX), hi = _mm256_set1_ps((float)QMAX);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    k = 0;
    for (; k + 32 <= K; k += 32) {
        __m256i iv[4];
        for (int j = 0; j < 4; j++) {
            __m256 r = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + k + 8 * j), vs),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
            iv[j] = _mm256_cvttps_epi32(r);
        }
        __m256i p01 = _mm256_packs_epi32(iv[0], iv[1]);
        __m256i p23 = _mm256_packs_epi32(iv[2], iv[3]);
        __m256i b = _mm256_packs_epi16(p01, p23);
        _mm256_storeu_si256((__m256i *)(q + k), _mm256_permutevar8x32_epi32(b, perm));
    }
    for (; k < K; k++) {
        float r = nearbyintf(x[k] / s);
        r = r < -QMAX ? (float)-QMAX : (r > QMAX ? (float)QMAX : r);
        q[k] = (int8_t)(int)r;
    }
    *scale_out = s;
}

LPU_AVX2 static float sumsq_avx2(const float *x, int64_t K) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m256 v0 = _mm256_loadu_ps(x + k), v1 = _mm256_loadu_ps(x + k + 8);
        __m256 v2 = _mm256_loadu_ps(x + k + 16), v3 = _mm256_loadu_ps(x + k + 24);
        a0 = _mm256_add_ps(a0, _mm256_mul_ps(v0, v0));
        a1 = _mm256_add_ps(a1, _mm256_mul_ps(v1, v1));
        a2 = _mm256_add_ps(a2, _mm256_mul_ps(v2, v2));
        a3 = _mm256_add_ps(a3, _mm256_mul_ps(v3, v3));
    }
    if (k < K) {
        float tail[32];
        for (int l = 0; l < 32; l++) tail[l] = k + l < K ? x[k + l] : 0.0f;
        __m256 v0 = _mm256_loadu_ps(tail), v1 = _mm256_loadu_ps(tail + 8);
        __m256 v2 = _mm256_loadu_ps(tail + 16), v3 = _mm256_loadu_ps(tail + 24);
        a0 = _mm256_add_ps(a0, _mm256_mul_ps(v0, v0));
        a1 = _mm256_add_ps(a1, _mm256_mul_ps(v1, v1));
        a2 = _mm256_add_ps(a2, _mm256_mul_ps(v2, v2));
        a3 = _mm256_add_ps(a3, _mm256_mul_ps(v3, v3));
    }
    return hsum8_avx2(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

LPU_AVX2 static void rmsnorm_row_avx2(const float *x, const float *w, int64_t K, float eps, float *out) {
    float r = rms_factor(sumsq_avx2(x, K), K, eps);
    __m256 vr = _mm256_set1_ps(r);
    int64_t k = 0;
    for (; k + 8 <= K; k += 8)
        _mm256_storeu_ps(out + k, _mm256_mul_ps(_mm256_div_ps(_mm256_loadu_ps(x + k), vr), _mm256_loadu_ps(w + k)));
    for (; k < K; k++) out[k] = (x[k] / r) * w[k];
}

LPU_AVX2 static void silu_mul_row_avx2(const float *g, const float *u, int64_t F, float *out) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 neg = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));
    int64_t k = 0;
    for (; k + 8 <= F; k += 8) {
        __m256 gv = _mm256_loadu_ps(g + k);
        __m256 e = exp8_avx2(_mm256_xor_ps(gv, neg));
        _mm256_storeu_ps(out + k, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + k)));
    }
    if (k < F) { /* the same 8-lane code on a zero-padded copy */
        float gt[8] = {0}, ut[8] = {0}, ot[8];
        for (int64_t j = k; j < F; j++) {
            gt[j - k] = g[j];
            ut[j - k] = u[j];
        }
        __m256 gv = _mm256_loadu_ps(gt);
        __m256 e = exp8_avx2(_mm256_xor_ps(gv, neg));
        _mm256_storeu_ps(ot, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(ut)));
        for (int64_t j = k; j < F; j++) out[j] = ot[j - k];
    }
}
#endif

static void quantize_row(const float *x, int64_t K, int8_t *q, float *s) {
#if LPU_X86
    if (active_isa == ISA_AVX2) {
        quantize_row_avx2(x, K, q, s);
        return;
    }
#endif
    quantize_row_generic(x, K, q, s);
}

static void rmsnorm_row(const float *x, const float *w, int64_t K, float eps, float *out) {
#if LPU_X86
    if (active_isa == ISA_AVX2) {
        rmsnorm_row_avx2(x, w, K, eps, out);
        return;
    }
#endif
    rmsnorm_row_generic(x, w, K, eps, out);
}

static void silu_mul_row(const float *g, const float *u, int64_t F, float *out) {
#if LPU_X86
    if (active_isa == ISA_AVX2) {
        silu_mul_row_avx2(g, u, F, out);
        return;
    }
#endif
    silu_mul_row_generic(g, u, F, out);
}

enum { ROW_QUANTIZE = 0, ROW_RMSNORM_Q = 1, ROW_RMSNORM = 2, ROW_SILU_Q = 3 };

typedef struct {
    int kind;
    int64_t M, K, rows_per_task;
    const float *x;
    int64_t ldx;
    const float *u; /* silu: up */
    int64_t ldu;
    const float *w; /* rmsnorm weight */
    float eps;
    int8_t *q;
    int64_t ldq;
    float *scale;
    float *out;
    int64_t ldo;
} row_ctx;

static void row_task(void *vctx, int64_t t) {
    const row_ctx *c = (const row_ctx *)vctx;
    int64_t m0 = t * c->rows_per_task, m1 = m0 + c->rows_per_task < c->M ? m0 + c->rows_per_task : c->M;
    float *tmp = (c->kind == ROW_RMSNORM_Q || c->kind == ROW_SILU_Q) ? (float *)scratch((size_t)c->K * 4) : NULL;
    if ((c->kind == ROW_RMSNORM_Q || c->kind == ROW_SILU_Q) && tmp == NULL) return; /* out of memory */
    for (int64_t m = m0; m < m1; m++) {
        const float *x = c->x + m * c->ldx;
        switch (c->kind) {
        case ROW_QUANTIZE:
            quantize_row(x, c->K, c->q + m * c->ldq, c->scale + m);
            break;
        case ROW_RMSNORM_Q:
            rmsnorm_row(x, c->w, c->K, c->eps, tmp);
            quantize_row(tmp, c->K, c->q + m * c->ldq, c->scale + m);
            break;
        case ROW_RMSNORM:
            rmsnorm_row(x, c->w, c->K, c->eps, c->out + m * c->ldo);
            break;
        case ROW_SILU_Q:
            silu_mul_row(x, c->u + m * c->ldu, c->K, tmp);
            quantize_row(tmp, c->K, c->q + m * c->ldq, c->scale + m);
            break;
        }
    }
}

static void row_run(row_ctx *c) {
    if (c->M == 0) return;
    int64_t elems = c->M * (c->K > 0 ? c->K : 1);
    int64_t tasks = elems < 32768 ? 1 : split_tasks(c->M, 1, (int64_t)pool.want_threads * 4);
    c->rows_per_task = (c->M + tasks - 1) / tasks;
    tasks = (c->M + c->rows_per_task - 1) / c->rows_per_task;
    pool_run(row_task, c, tasks);
}

/* ------------------------------------------------------------------------------------------------------------
 * Attention over a paged fp16 KV cache.
 *
 * A task is (sequence, tile of up to R consecutive rows, KV head): keys are converted to float32 in chunks of
 * KC slots, shared by the group's query heads and the tile's rows; per (row, head) the scores are dot products
 * (8 lanes over D, then the fixed 8-lane tree), times scale; softmax subtracts the max, exps 8 scores at a time
 * (lanes past the row's position are set to 0), sums in 8 lanes + tree; the output accumulates e_j * v_j in
 * position order and is divided by the sum at the end. Nothing in a (row, head)'s sequence of operations
 * depends on the tile, the other rows, the other heads or the thread that runs it.
 * ------------------------------------------------------------------------------------------------------------ */

#define ATT_KC 32 /* keys per chunk (converted to float32 when shared) */

typedef struct {
    int64_t seq, r0, r1, kv0, kv1; /* rows [r0, r1) of sequence seq (absolute row indices), KV heads [kv0, kv1) */
} att_task;

typedef struct {
    const float *q;
    int64_t ldq; /* row stride of q/out in floats */
    float *out;
    int64_t ldo;
    const uint16_t *kc, *vc; /* (S, Hkv, D) */
    int64_t Hq, Hkv, D, group;
    const int64_t *seq_rows, *start_pos, *slot_off, *slots;
    float scale;
    const att_task *tasks;
} att_ctx;

/* Scores of 8 keys (kb: 8 x D floats) against q (D floats): portable lane-wise replay of the AVX2 code. */
static void scores8_generic(const float *q, const float *kb, int64_t D, float scale, float *s8) {
    float p[8][8];
    for (int i = 0; i < 8; i++)
        for (int l = 0; l < 8; l++) p[i][l] = q[l] * kb[i * D + l];
    for (int64_t c = 8; c < D; c += 8)
        for (int i = 0; i < 8; i++)
            for (int l = 0; l < 8; l++) p[i][l] = p[i][l] + q[c + l] * kb[i * D + c + l];
    for (int i = 0; i < 8; i++) s8[i] = hsum8_lanes(p[i]) * scale;
}

/* Softmax numerators in place over sc[0 .. n_pad) (n valid), returns the sum. */
static float softmax_generic(float *sc, int64_t n, int64_t n_pad) {
    float mx[8];
    for (int l = 0; l < 8; l++) mx[l] = -INFINITY;
    for (int64_t j = 0; j < n_pad; j += 8)
        for (int l = 0; l < 8; l++) {
            float v = j + l < n ? sc[j + l] : -INFINITY;
            mx[l] = v > mx[l] ? v : mx[l];
        }
    float m = mx[0];
    for (int l = 1; l < 8; l++) m = mx[l] > m ? mx[l] : m;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t j = 0; j < n_pad; j += 8)
        for (int l = 0; l < 8; l++) {
            float e = exp_lane(sc[j + l] - m);
            if (j + l >= n) e = 0.0f;
            sc[j + l] = e;
            acc[l] = acc[l] + e;
        }
    return hsum8_lanes(acc);
}

static void convert_rows_generic(const uint16_t *cache, const int64_t *slots, int64_t j0, int64_t n_valid,
                                 int64_t n_total, int64_t Hkv, int64_t kvh, int64_t D, float *dst) {
    for (int64_t j = 0; j < n_total; j++) {
        float *d = dst + j * D;
        if (j < n_valid) {
            const uint16_t *src = cache + (slots[j0 + j] * Hkv + kvh) * D;
            for (int64_t x = 0; x < D; x++) d[x] = f16_to_f32(src[x]);
        } else {
            for (int64_t x = 0; x < D; x++) d[x] = 0.0f;
        }
    }
}

#if LPU_X86
LPU_AVX2 static void convert_rows_avx2(const uint16_t *cache, const int64_t *slots, int64_t j0, int64_t n_valid,
                                       int64_t n_total, int64_t Hkv, int64_t kvh, int64_t D, float *dst) {
    for (int64_t j = 0; j < n_total; j++) {
        float *d = dst + j * D;
        if (j < n_valid) {
            const uint16_t *src = cache + (slots[j0 + j] * Hkv + kvh) * D;
            for (int64_t x = 0; x < D; x += 8)
                _mm256_storeu_ps(d + x, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + x))));
        } else {
            for (int64_t x = 0; x < D; x += 8) _mm256_storeu_ps(d + x, _mm256_setzero_ps());
        }
    }
}

LPU_AVX2 static void scores8_avx2(const float *q, const float *kb, int64_t D, float scale, float *s8) {
    __m256 p0, p1, p2, p3, p4, p5, p6, p7;
    {
        __m256 qv = _mm256_loadu_ps(q);
        p0 = _mm256_mul_ps(qv, _mm256_loadu_ps(kb + 0 * D));
        p1 = _mm256_mul_ps(qv, _mm256_loadu_ps(kb + 1 * D));
        p2 = _mm256_mul_ps(qv, _mm256_loadu_ps(kb + 2 * D));
        p3 = _mm256_mul_ps(qv, _mm256_loadu_ps(kb + 3 * D));
        p4 = _mm256_mul_ps(qv, _mm256_loadu_ps(kb + 4 * D));
        p5 = _mm256_mul_ps(qv, _mm256_loadu_ps(kb + 5 * D));
        p6 = _mm256_mul_ps(qv, _mm256_loadu_ps(kb + 6 * D));
        p7 = _mm256_mul_ps(qv, _mm256_loadu_ps(kb + 7 * D));
    }
    for (int64_t c = 8; c < D; c += 8) {
        __m256 qv = _mm256_loadu_ps(q + c);
        p0 = _mm256_add_ps(p0, _mm256_mul_ps(qv, _mm256_loadu_ps(kb + 0 * D + c)));
        p1 = _mm256_add_ps(p1, _mm256_mul_ps(qv, _mm256_loadu_ps(kb + 1 * D + c)));
        p2 = _mm256_add_ps(p2, _mm256_mul_ps(qv, _mm256_loadu_ps(kb + 2 * D + c)));
        p3 = _mm256_add_ps(p3, _mm256_mul_ps(qv, _mm256_loadu_ps(kb + 3 * D + c)));
        p4 = _mm256_add_ps(p4, _mm256_mul_ps(qv, _mm256_loadu_ps(kb + 4 * D + c)));
        p5 = _mm256_add_ps(p5, _mm256_mul_ps(qv, _mm256_loadu_ps(kb + 5 * D + c)));
        p6 = _mm256_add_ps(p6, _mm256_mul_ps(qv, _mm256_loadu_ps(kb + 6 * D + c)));
        p7 = _mm256_add_ps(p7, _mm256_mul_ps(qv, _mm256_loadu_ps(kb + 7 * D + c)));
    }
    /* The fixed tree per key: ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)). */
    __m256 h01 = _mm256_hadd_ps(p0, p1), h23 = _mm256_hadd_ps(p2, p3);
    __m256 h45 = _mm256_hadd_ps(p4, p5), h67 = _mm256_hadd_ps(p6, p7);
    __m256 h0123 = _mm256_hadd_ps(h01, h23), h4567 = _mm256_hadd_ps(h45, h67);
    __m256 lo = _mm256_permute2f128_ps(h0123, h4567, 0x20);
    __m256 hi = _mm256_permute2f128_ps(h0123, h4567, 0x31);
    _mm256_storeu_ps(s8, _mm256_mul_ps(_mm256_add_ps(lo, hi), _mm256_set1_ps(scale)));
}

/* scores8_avx2 reading the keys straight from the fp16 cache (rows[i]: D halves; the conversion is exact, so
 * the results are those of the converted-buffer path). */
LPU_AVX2 static void scores8_f16_avx2(const float *q, const uint16_t *const *rows, int64_t D, float scale,
                                      float *s8) {
#define KROW(i, c) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(rows[i] + (c))))
    __m256 p0, p1, p2, p3, p4, p5, p6, p7;
    {
        __m256 qv = _mm256_loadu_ps(q);
        p0 = _mm256_mul_ps(qv, KROW(0, 0));
        p1 = _mm256_mul_ps(qv, KROW(1, 0));
        p2 = _mm256_mul_ps(qv, KROW(2, 0));
        p3 = _mm256_mul_ps(qv, KROW(3, 0));
        p4 = _mm256_mul_ps(qv, KROW(4, 0));
        p5 = _mm256_mul_ps(qv, KROW(5, 0));
        p6 = _mm256_mul_ps(qv, KROW(6, 0));
        p7 = _mm256_mul_ps(qv, KROW(7, 0));
    }
    for (int64_t c = 8; c < D; c += 8) {
        __m256 qv = _mm256_loadu_ps(q + c);
        p0 = _mm256_add_ps(p0, _mm256_mul_ps(qv, KROW(0, c)));
        p1 = _mm256_add_ps(p1, _mm256_mul_ps(qv, KROW(1, c)));
        p2 = _mm256_add_ps(p2, _mm256_mul_ps(qv, KROW(2, c)));
        p3 = _mm256_add_ps(p3, _mm256_mul_ps(qv, KROW(3, c)));
        p4 = _mm256_add_ps(p4, _mm256_mul_ps(qv, KROW(4, c)));
        p5 = _mm256_add_ps(p5, _mm256_mul_ps(qv, KROW(5, c)));
        p6 = _mm256_add_ps(p6, _mm256_mul_ps(qv, KROW(6, c)));
        p7 = _mm256_add_ps(p7, _mm256_mul_ps(qv, KROW(7, c)));
    }
#undef KROW
    __m256 h01 = _mm256_hadd_ps(p0, p1), h23 = _mm256_hadd_ps(p2, p3);
    __m256 h45 = _mm256_hadd_ps(p4, p5), h67 = _mm256_hadd_ps(p6, p7);
    __m256 h0123 = _mm256_hadd_ps(h01, h23), h4567 = _mm256_hadd_ps(h45, h67);
    __m256 lo = _mm256_permute2f128_ps(h0123, h4567, 0x20);
    __m256 hi = _mm256_permute2f128_ps(h0123, h4567, 0x31);
    _mm256_storeu_ps(s8, _mm256_mul_ps(_mm256_add_ps(lo, hi), _mm256_set1_ps(scale)));
}

/* pv_accum_avx2 reading the values straight from the fp16 cache: acc += e_j * v[slot_j] for j in [0, n),
 * up to 64 lanes of D per pass so a row (D <= 64) is read once. */
LPU_AVX2 static void pv_accum_f16_avx2(float *acc, const float *e, const uint16_t *vc, const int64_t *slots,
                                       int64_t n, int64_t Hkv, int64_t kvh, int64_t D) {
    for (int64_t d = 0; d < D; d += 64) {
        const int64_t nv = (D - d < 64 ? D - d : 64) / 8; /* vectors in this pass */
        __m256 a[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) a[i] = i < nv ? _mm256_loadu_ps(acc + d + 8 * i) : _mm256_setzero_ps();
        for (int64_t j = 0; j < n; j++) {
            const uint16_t *v = vc + (slots[j] * Hkv + kvh) * D + d;
            __m256 ej = _mm256_broadcast_ss(e + j);
            if (nv == 8) {
#pragma GCC unroll 8
                for (int i = 0; i < 8; i++)
                    a[i] = _mm256_add_ps(
                        a[i], _mm256_mul_ps(ej, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + 8 * i)))));
            } else {
#pragma GCC unroll 8
                for (int i = 0; i < 8; i++)
                    if (i < nv)
                        a[i] = _mm256_add_ps(
                            a[i], _mm256_mul_ps(ej, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + 8 * i)))));
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            if (i < nv) _mm256_storeu_ps(acc + d + 8 * i, a[i]);
    }
}

LPU_AVX2 static float softmax_avx2(float *sc, int64_t n, int64_t n_pad) {
    const __m256 lane = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const int64_t full = n & ~(int64_t)7; /* vectors whose 8 lanes are all valid: no masking needed */
    __m256 mx = ninf;
    int64_t j = 0;
    for (; j < full; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(sc + j));
    for (; j < n_pad; j += 8) {
        __m256 valid = _mm256_cmp_ps(_mm256_add_ps(lane, _mm256_set1_ps((float)j)), _mm256_set1_ps((float)n),
                                     _CMP_LT_OQ);
        mx = _mm256_max_ps(mx, _mm256_blendv_ps(ninf, _mm256_loadu_ps(sc + j), valid));
    }
    __m256 m = _mm256_set1_ps(hmax8_avx2(mx));
    __m256 acc = _mm256_setzero_ps();
    for (j = 0; j < full; j += 8) {
        __m256 e = exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(sc + j), m));
        _mm256_storeu_ps(sc + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    for (; j < n_pad; j += 8) {
        __m256 valid = _mm256_cmp_ps(_mm256_add_ps(lane, _mm256_set1_ps((float)j)), _mm256_set1_ps((float)n),
                                     _CMP_LT_OQ);
        __m256 e = exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(sc + j), m));
        e = _mm256_blendv_ps(_mm256_setzero_ps(), e, valid);
        _mm256_storeu_ps(sc + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    return hsum8_avx2(acc);
}

/* acc[0..D) += e_j * vb[j][0..D) for j in [0, n), in order; D a multiple of 8. */
LPU_AVX2 static void pv_accum_avx2(float *acc, const float *e, const float *vb, int64_t n, int64_t D) {
    int64_t d = 0;
    for (; d + 64 <= D; d += 64) {
        __m256 a0 = _mm256_loadu_ps(acc + d), a1 = _mm256_loadu_ps(acc + d + 8);
        __m256 a2 = _mm256_loadu_ps(acc + d + 16), a3 = _mm256_loadu_ps(acc + d + 24);
        __m256 a4 = _mm256_loadu_ps(acc + d + 32), a5 = _mm256_loadu_ps(acc + d + 40);
        __m256 a6 = _mm256_loadu_ps(acc + d + 48), a7 = _mm256_loadu_ps(acc + d + 56);
        for (int64_t j = 0; j < n; j++) {
            const float *v = vb + j * D + d;
            __m256 ej = _mm256_broadcast_ss(e + j);
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(ej, _mm256_loadu_ps(v)));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(ej, _mm256_loadu_ps(v + 8)));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(ej, _mm256_loadu_ps(v + 16)));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(ej, _mm256_loadu_ps(v + 24)));
            a4 = _mm256_add_ps(a4, _mm256_mul_ps(ej, _mm256_loadu_ps(v + 32)));
            a5 = _mm256_add_ps(a5, _mm256_mul_ps(ej, _mm256_loadu_ps(v + 40)));
            a6 = _mm256_add_ps(a6, _mm256_mul_ps(ej, _mm256_loadu_ps(v + 48)));
            a7 = _mm256_add_ps(a7, _mm256_mul_ps(ej, _mm256_loadu_ps(v + 56)));
        }
        _mm256_storeu_ps(acc + d, a0);
        _mm256_storeu_ps(acc + d + 8, a1);
        _mm256_storeu_ps(acc + d + 16, a2);
        _mm256_storeu_ps(acc + d + 24, a3);
        _mm256_storeu_ps(acc + d + 32, a4);
        _mm256_storeu_ps(acc + d + 40, a5);
        _mm256_storeu_ps(acc + d + 48, a6);
        _mm256_storeu_ps(acc + d + 56, a7);
    }
    for (; d + 16 <= D; d += 16) {
        __m256 a0 = _mm256_loadu_ps(acc + d), a1 = _mm256_loadu_ps(acc + d + 8);
        for (int64_t j = 0; j < n; j++) {
            __m256 ej = _mm256_broadcast_ss(e + j);
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(ej, _mm256_loadu_ps(vb + j * D + d)));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(ej, _mm256_loadu_ps(vb + j * D + d + 8)));
        }
        _mm256_storeu_ps(acc + d, a0);
        _mm256_storeu_ps(acc + d + 8, a1);
    }
    for (; d < D; d += 8) {
        __m256 a0 = _mm256_loadu_ps(acc + d);
        for (int64_t j = 0; j < n; j++)
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(_mm256_broadcast_ss(e + j), _mm256_loadu_ps(vb + j * D + d)));
        _mm256_storeu_ps(acc + d, a0);
    }
}

/* scores8_avx2's arithmetic for two query vectors (q0, q1) against 4 keys (kb: 4 x D floats): per (query, key)
 * the same 8-lane partial sums over D and the same tree, so each score has the same bits as from scores8_avx2;
 * blocking two queries on one pass over the keys saves a third of the loads. s0[0..4) and s1[0..4). */
LPU_AVX2 static void scores2x4_avx2(const float *q0, const float *q1, const float *kb, int64_t D, float scale,
                                    float *s0, float *s1) {
    __m256 p0, p1, p2, p3, p4, p5, p6, p7;
    {
        __m256 a = _mm256_loadu_ps(q0), b = _mm256_loadu_ps(q1);
        __m256 k0 = _mm256_loadu_ps(kb), k1 = _mm256_loadu_ps(kb + D);
        __m256 k2 = _mm256_loadu_ps(kb + 2 * D), k3 = _mm256_loadu_ps(kb + 3 * D);
        p0 = _mm256_mul_ps(a, k0);
        p1 = _mm256_mul_ps(a, k1);
        p2 = _mm256_mul_ps(a, k2);
        p3 = _mm256_mul_ps(a, k3);
        p4 = _mm256_mul_ps(b, k0);
        p5 = _mm256_mul_ps(b, k1);
        p6 = _mm256_mul_ps(b, k2);
        p7 = _mm256_mul_ps(b, k3);
    }
    for (int64_t c = 8; c < D; c += 8) {
        __m256 a = _mm256_loadu_ps(q0 + c), b = _mm256_loadu_ps(q1 + c);
        __m256 k0 = _mm256_loadu_ps(kb + c), k1 = _mm256_loadu_ps(kb + D + c);
        __m256 k2 = _mm256_loadu_ps(kb + 2 * D + c), k3 = _mm256_loadu_ps(kb + 3 * D + c);
        p0 = _mm256_add_ps(p0, _mm256_mul_ps(a, k0));
        p1 = _mm256_add_ps(p1, _mm256_mul_ps(a, k1));
        p2 = _mm256_add_ps(p2, _mm256_mul_ps(a, k2));
        p3 = _mm256_add_ps(p3, _mm256_mul_ps(a, k3));
        p4 = _mm256_add_ps(p4, _mm256_mul_ps(b, k0));
        p5 = _mm256_add_ps(p5, _mm256_mul_ps(b, k1));
        p6 = _mm256_add_ps(p6, _mm256_mul_ps(b, k2));
        p7 = _mm256_add_ps(p7, _mm256_mul_ps(b, k3));
    }
    __m256 h01 = _mm256_hadd_ps(p0, p1), h23 = _mm256_hadd_ps(p2, p3);
    __m256 h45 = _mm256_hadd_ps(p4, p5), h67 = _mm256_hadd_ps(p6, p7);
    __m256 h0123 = _mm256_hadd_ps(h01, h23), h4567 = _mm256_hadd_ps(h45, h67);
    __m256 lo = _mm256_permute2f128_ps(h0123, h4567, 0x20);
    __m256 hi = _mm256_permute2f128_ps(h0123, h4567, 0x31);
    __m256 r = _mm256_mul_ps(_mm256_add_ps(lo, hi), _mm256_set1_ps(scale));
    _mm_storeu_ps(s0, _mm256_castps256_ps128(r));
    _mm_storeu_ps(s1, _mm256_extractf128_ps(r, 1));
}

/* pv_accum_avx2 for two (row, head) pairs over the same n values: acc0 += e0_j * v_j and acc1 += e1_j * v_j in
 * position order, per element the same operations as pv_accum_avx2 (32 lanes of D per pass, each v read once for
 * both). D a multiple of 8. */
LPU_AVX2 static void pv_accum2_avx2(float *acc0, float *acc1, const float *e0, const float *e1, const float *vb,
                                    int64_t n, int64_t D) {
    for (int64_t d = 0; d < D; d += 32) {
        const int64_t nv = (D - d < 32 ? D - d : 32) / 8;
        if (nv == 4) {
            __m256 a0 = _mm256_loadu_ps(acc0 + d), a1 = _mm256_loadu_ps(acc0 + d + 8);
            __m256 a2 = _mm256_loadu_ps(acc0 + d + 16), a3 = _mm256_loadu_ps(acc0 + d + 24);
            __m256 b0 = _mm256_loadu_ps(acc1 + d), b1 = _mm256_loadu_ps(acc1 + d + 8);
            __m256 b2 = _mm256_loadu_ps(acc1 + d + 16), b3 = _mm256_loadu_ps(acc1 + d + 24);
            for (int64_t j = 0; j < n; j++) {
                const float *v = vb + j * D + d;
                __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8);
                __m256 v2 = _mm256_loadu_ps(v + 16), v3 = _mm256_loadu_ps(v + 24);
                __m256 x = _mm256_broadcast_ss(e0 + j), y = _mm256_broadcast_ss(e1 + j);
                a0 = _mm256_add_ps(a0, _mm256_mul_ps(x, v0));
                a1 = _mm256_add_ps(a1, _mm256_mul_ps(x, v1));
                a2 = _mm256_add_ps(a2, _mm256_mul_ps(x, v2));
                a3 = _mm256_add_ps(a3, _mm256_mul_ps(x, v3));
                b0 = _mm256_add_ps(b0, _mm256_mul_ps(y, v0));
                b1 = _mm256_add_ps(b1, _mm256_mul_ps(y, v1));
                b2 = _mm256_add_ps(b2, _mm256_mul_ps(y, v2));
                b3 = _mm256_add_ps(b3, _mm256_mul_ps(y, v3));
            }
            _mm256_storeu_ps(acc0 + d, a0);
            _mm256_storeu_ps(acc0 + d + 8, a1);
            _mm256_storeu_ps(acc0 + d + 16, a2);
            _mm256_storeu_ps(acc0 + d + 24, a3);
            _mm256_storeu_ps(acc1 + d, b0);
            _mm256_storeu_ps(acc1 + d + 8, b1);
            _mm256_storeu_ps(acc1 + d + 16, b2);
            _mm256_storeu_ps(acc1 + d + 24, b3);
        } else {
            for (int64_t i = 0; i < nv; i++) {
                __m256 a = _mm256_loadu_ps(acc0 + d + 8 * i), b = _mm256_loadu_ps(acc1 + d + 8 * i);
                for (int64_t j = 0; j < n; j++) {
                    __m256 v = _mm256_loadu_ps(vb + j * D + d + 8 * i);
                    a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_broadcast_ss(e0 + j), v));
                    b = _mm256_add_ps(b, _mm256_mul_ps(_mm256_broadcast_ss(e1 + j), v));
                }
                _mm256_storeu_ps(acc0 + d + 8 * i, a);
                _mm256_storeu_ps(acc1 + d + 8 * i, b);
            }
        }
    }
}

/* o[0..D) = a / s, 8 lanes at a time; returns how many were done. */
LPU_AVX2 static int64_t div_row_avx2(float *o, const float *a, float s, int64_t D) {
    const __m256 vs = _mm256_set1_ps(s);
    int64_t d = 0;
    for (; d + 8 <= D; d += 8) _mm256_storeu_ps(o + d, _mm256_div_ps(_mm256_loadu_ps(a + d), vs));
    return d;
}
#endif

static void pv_accum_generic(float *acc, const float *e, const float *vb, int64_t n, int64_t D) {
    for (int64_t j = 0; j < n; j++) {
        const float *v = vb + j * D;
        float ej = e[j];
        for (int64_t d = 0; d < D; d++) acc[d] = acc[d] + ej * v[d];
    }
}

/* Prefetches D halves of a cache row (a slot's piece for one KV head). */
static inline void prefetch_piece(const uint16_t *row, int64_t D) {
#if LPU_X86
    for (int64_t x = 0; x < D; x += 32) _mm_prefetch((const char *)(row + x), _MM_HINT_T0);
#else
    (void)row;
    (void)D;
#endif
}

#if LPU_X86
/* The (row, head) pairs of a task for one KV head, in the order the pair loops below take them: row by row, each
 * row's group of query heads. */
#define ATT_PAIR(ri, kvi, g) (((ri)*NKV + (kvi)) * G + (g))

/* Pass 1 for one chunk of converted keys (kbuf: cn keys from c0) and one KV head, AVX2: pairs two by two
 * (consecutive heads of a row, or the last head of a row with the first of the next), 4 keys at a time. A row
 * computes its scores up to its own last key rounded up to 4 (or to its partner's): scores past a row's
 * position land in its padding and are never read (softmax and the value pass stop at the row's position). */
LPU_AVX2 static void att_scores_pairs_avx2(const att_ctx *c, const att_task *tk, const float *kbuf, float *sc,
                                           int64_t nk_pad, int64_t c0, int64_t cn, int64_t kvi, int64_t kvh,
                                           int64_t start, int64_t row0) {
    const int64_t D = c->D, G = c->group, R = tk->r1 - tk->r0, NKV = tk->kv1 - tk->kv0, P = R * G;
    for (int64_t p = 0; p < P; p += 2) {
        const int64_t ri0 = p / G, g0 = p % G, ri1 = (p + 1) / G, g1 = (p + 1) % G;
        const int two = p + 1 < P;
        const int64_t nk0 = start + (tk->r0 + ri0 - row0) + 1, nk1 = start + (tk->r0 + ri1 - row0) + 1;
        const int64_t nk = two && nk1 > nk0 ? nk1 : nk0;
        if (nk <= c0) continue;
        const int64_t upto = nk - c0 < cn ? nk - c0 : cn;
        const float *qa = c->q + (tk->r0 + ri0) * c->ldq + (kvh * G + g0) * D;
        float *sa = sc + ATT_PAIR(ri0, kvi, g0) * nk_pad + c0;
        if (two) {
            const float *qb = c->q + (tk->r0 + ri1) * c->ldq + (kvh * G + g1) * D;
            float *sb = sc + ATT_PAIR(ri1, kvi, g1) * nk_pad + c0;
            for (int64_t b = 0; b < upto; b += 4) scores2x4_avx2(qa, qb, kbuf + b * D, D, c->scale, sa + b, sb + b);
        } else {
            for (int64_t b = 0; b < upto; b += 8) scores8_avx2(qa, kbuf + b * D, D, c->scale, sa + b);
        }
    }
}

/* Pass 3 for one chunk of converted values, AVX2: pairs two by two over the keys both see, then the longer one
 * alone over the rest (each pair's sum stays in position order). */
LPU_AVX2 static void att_pv_pairs_avx2(const att_ctx *c, const att_task *tk, const float *vbuf, const float *sc,
                                       float *acc, int64_t nk_pad, int64_t c0, int64_t cn, int64_t kvi,
                                       int64_t start, int64_t row0) {
    const int64_t D = c->D, G = c->group, R = tk->r1 - tk->r0, NKV = tk->kv1 - tk->kv0, P = R * G;
    for (int64_t p = 0; p < P; p += 2) {
        const int two = p + 1 < P;
        int64_t pi[2], upto[2];
        for (int i = 0; i < 1 + two; i++) {
            const int64_t ri = (p + i) / G, g = (p + i) % G;
            const int64_t nk = start + (tk->r0 + ri - row0) + 1;
            pi[i] = ATT_PAIR(ri, kvi, g);
            upto[i] = nk <= c0 ? 0 : (nk - c0 < cn ? nk - c0 : cn);
        }
        if (!two) {
            if (upto[0] > 0) pv_accum_avx2(acc + pi[0] * D, sc + pi[0] * nk_pad + c0, vbuf, upto[0], D);
            continue;
        }
        const int64_t both = upto[0] < upto[1] ? upto[0] : upto[1];
        if (both > 0)
            pv_accum2_avx2(acc + pi[0] * D, acc + pi[1] * D, sc + pi[0] * nk_pad + c0, sc + pi[1] * nk_pad + c0,
                           vbuf, both, D);
        for (int i = 0; i < 2; i++)
            if (upto[i] > both)
                pv_accum_avx2(acc + pi[i] * D, sc + pi[i] * nk_pad + c0 + both, vbuf + both * D, upto[i] - both, D);
    }
}
#undef ATT_PAIR
#endif

/* A task: rows [r0, r1) of one sequence, KV heads [kv0, kv1). Keys are walked in chunks of ATT_KC slots and,
 * inside a chunk, KV head by KV head, so each slot's row of the cache (all heads, contiguous) is read in one
 * stretch while the next chunk is prefetched. A chunk is converted to float32 once per KV head when several
 * (row, head) pairs share it; a single row with a single head per KV head reads the fp16 cache directly. */
static void att_task_run(void *vctx, int64_t t) {
    const att_ctx *c = (const att_ctx *)vctx;
    const att_task *tk = &c->tasks[t];
    const int64_t D = c->D, G = c->group, R = tk->r1 - tk->r0, Hkv = c->Hkv;
    const int64_t NKV = tk->kv1 - tk->kv0, H = NKV * G; /* KV heads and query heads of the task */
    const int64_t seq = tk->seq;
    const int64_t start = c->start_pos[seq], row0 = c->seq_rows[seq];
    const int64_t *table = c->slots + c->slot_off[seq];
    const int64_t nk_max = start + (tk->r1 - 1 - row0) + 1; /* keys seen by the tile's last row */
    const int64_t nk_pad = (nk_max + 7) & ~(int64_t)7;
    const int avx2 = active_isa == ISA_AVX2;
    const int direct = avx2 && R * G == 1;

    /* scratch: kbuf (KC x D) | sc (R*H x nk_pad) | acc (R*H x D) | sums (R*H) */
    size_t kb_n = (size_t)ATT_KC * (size_t)D;
    size_t sc_n = (size_t)(R * H) * (size_t)nk_pad;
    size_t acc_n = (size_t)(R * H) * (size_t)D;
    float *kbuf = (float *)scratch((kb_n + sc_n + acc_n + (size_t)(R * H) + 64) * sizeof(float));
    if (kbuf == NULL) return;
    float *sc = kbuf + kb_n;
    float *acc = sc + sc_n;
    float *sums = acc + acc_n;
#define PAIR(ri, kvi, g) (((ri)*NKV + (kvi)) * G + (g))

    /* Pass 1: scores. */
    for (int64_t c0 = 0; c0 < nk_max; c0 += ATT_KC) {
        int64_t cn = nk_max - c0 < ATT_KC ? nk_max - c0 : ATT_KC;
        int64_t cn_pad = (cn + 7) & ~(int64_t)7;
        int64_t next_end = c0 + 2 * ATT_KC < nk_max ? c0 + 2 * ATT_KC : nk_max;
        for (int64_t kvi = 0; kvi < NKV; kvi++) {
            const int64_t kvh = tk->kv0 + kvi;
            for (int64_t j = c0 + ATT_KC; j < next_end; j++) prefetch_piece(c->kc + (table[j] * Hkv + kvh) * D, D);
            if (!direct) {
#if LPU_X86
                if (avx2)
                    convert_rows_avx2(c->kc, table, c0, cn, cn_pad, Hkv, kvh, D, kbuf);
                else
#endif
                    convert_rows_generic(c->kc, table, c0, cn, cn_pad, Hkv, kvh, D, kbuf);
            }
#if LPU_X86
            if (avx2 && !direct) { /* (row, head) pairs two by two against 4 keys at a time */
                att_scores_pairs_avx2(c, tk, kbuf, sc, nk_pad, c0, cn, kvi, kvh, start, row0);
                continue;
            }
#endif
            for (int64_t ri = 0; ri < R; ri++) {
                int64_t nk = start + (tk->r0 + ri - row0) + 1;
                if (nk <= c0) continue;
                int64_t upto = nk - c0 < cn ? nk - c0 : cn;
                for (int64_t g = 0; g < G; g++) {
                    const float *qv = c->q + (tk->r0 + ri) * c->ldq + (kvh * G + g) * D;
                    float *srow = sc + PAIR(ri, kvi, g) * nk_pad + c0;
                    for (int64_t b = 0; b < upto; b += 8) {
#if LPU_X86
                        if (direct) {
                            static const uint16_t zeros[1024] = {0};
                            const uint16_t *rows[8];
                            for (int i = 0; i < 8; i++)
                                rows[i] = b + i < cn ? c->kc + (table[c0 + b + i] * Hkv + kvh) * D : zeros;
                            scores8_f16_avx2(qv, rows, D, c->scale, srow + b);
                        } else if (avx2)
                            scores8_avx2(qv, kbuf + b * D, D, c->scale, srow + b);
                        else
#endif
                            scores8_generic(qv, kbuf + b * D, D, c->scale, srow + b);
                    }
                }
            }
        }
    }
    /* Pass 2: softmax numerators and sums. */
    for (int64_t ri = 0; ri < R; ri++) {
        int64_t nk = start + (tk->r0 + ri - row0) + 1;
        int64_t pad = (nk + 7) & ~(int64_t)7;
        for (int64_t h = 0; h < H; h++) {
            float *srow = sc + (ri * H + h) * nk_pad;
#if LPU_X86
            if (avx2)
                sums[ri * H + h] = softmax_avx2(srow, nk, pad);
            else
#endif
                sums[ri * H + h] = softmax_generic(srow, nk, pad);
        }
    }
    /* Pass 3: e-weighted values, in position order per (row, head). */
    memset(acc, 0, acc_n * sizeof(float));
    for (int64_t c0 = 0; c0 < nk_max; c0 += ATT_KC) {
        int64_t cn = nk_max - c0 < ATT_KC ? nk_max - c0 : ATT_KC;
        int64_t next_end = c0 + 2 * ATT_KC < nk_max ? c0 + 2 * ATT_KC : nk_max;
        for (int64_t kvi = 0; kvi < NKV; kvi++) {
            const int64_t kvh = tk->kv0 + kvi;
            for (int64_t j = c0 + ATT_KC; j < next_end; j++) prefetch_piece(c->vc + (table[j] * Hkv + kvh) * D, D);
            if (!direct) {
#if LPU_X86
                if (avx2)
                    convert_rows_avx2(c->vc, table, c0, cn, cn, Hkv, kvh, D, kbuf);
                else
#endif
                    convert_rows_generic(c->vc, table, c0, cn, cn, Hkv, kvh, D, kbuf);
            }
#if LPU_X86
            if (avx2 && !direct) {
                att_pv_pairs_avx2(c, tk, kbuf, sc, acc, nk_pad, c0, cn, kvi, start, row0);
                continue;
            }
#endif
            for (int64_t ri = 0; ri < R; ri++) {
                int64_t nk = start + (tk->r0 + ri - row0) + 1;
                if (nk <= c0) continue;
                int64_t upto = nk - c0 < cn ? nk - c0 : cn;
                for (int64_t g = 0; g < G; g++) {
                    const float *e = sc + PAIR(ri, kvi, g) * nk_pad + c0;
                    float *a = acc + PAIR(ri, kvi, g) * D;
#if LPU_X86
                    if (direct)
                        pv_accum_f16_avx2(a, e, c->vc, table + c0, upto, Hkv, kvh, D);
                    else if (avx2)
                        pv_accum_avx2(a, e, kbuf, upto, D);
                    else
#endif
                        pv_accum_generic(a, e, kbuf, upto, D);
                }
            }
        }
    }
    for (int64_t ri = 0; ri < R; ri++)
        for (int64_t kvi = 0; kvi < NKV; kvi++)
            for (int64_t g = 0; g < G; g++) {
                float *o = c->out + (tk->r0 + ri) * c->ldo + ((tk->kv0 + kvi) * G + g) * D;
                const float *a = acc + PAIR(ri, kvi, g) * D;
                float s = sums[PAIR(ri, kvi, g)];
                int64_t d = 0;
#if LPU_X86
                if (avx2) d = div_row_avx2(o, a, s, D); /* IEEE division: the same bits lane by lane */
#endif
                for (; d < D; d++) o[d] = a[d] / s;
            }
#undef PAIR
}

/* ------------------------------------------------------------------------------------------------------------
 * RoPE (rotate-half) and the fp16 KV store: elementwise, so any vector width gives numpy's bits.
 * ------------------------------------------------------------------------------------------------------------ */

#if LPU_X86
LPU_AVX2 static void rope_row_avx2(float *x, const float *cs, const float *sn, int64_t half, int64_t *done) {
    float *x1 = x, *x2 = x + half;
    int64_t i = 0;
    for (; i + 8 <= half; i += 8) {
        __m256 a = _mm256_loadu_ps(x1 + i), b = _mm256_loadu_ps(x2 + i);
        __m256 c = _mm256_loadu_ps(cs + i), s = _mm256_loadu_ps(sn + i);
        _mm256_storeu_ps(x1 + i, _mm256_sub_ps(_mm256_mul_ps(a, c), _mm256_mul_ps(b, s)));
        _mm256_storeu_ps(x2 + i, _mm256_add_ps(_mm256_mul_ps(b, c), _mm256_mul_ps(a, s)));
    }
    *done = i;
}

#endif

static void rope_row(float *x, const float *cs, const float *sn, int64_t half) {
    float *x1 = x, *x2 = x + half;
    int64_t i = 0;
#if LPU_X86
    if (active_isa == ISA_AVX2) {
        rope_row_avx2(x, cs, sn, half, &i);
    }
#endif
    for (; i < half; i++) {
        float a = x1[i], b = x2[i];
        float c = cs[i], s = sn[i];
        x1[i] = a * c - b * s;
        x2[i] = b * c + a * s;
    }
}

#if LPU_X86
LPU_AVX2 static void f32_to_f16_row_avx2(const float *src, uint16_t *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) dst[i] = f32_to_f16(src[i]);
}
#endif

static void f32_to_f16_row(const float *src, uint16_t *dst, int64_t n) {
#if LPU_X86
    if (active_isa == ISA_AVX2) {
        f32_to_f16_row_avx2(src, dst, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) dst[i] = f32_to_f16(src[i]);
}

/* ------------------------------------------------------------------------------------------------------------
 * Python glue: buffers are checked here (shape, dtype, strides), then the GIL is released.
 * ------------------------------------------------------------------------------------------------------------ */

typedef struct {
    Py_buffer b;
    int held;
} buf_t;

static void buf_release(buf_t *bufs, int n) {
    for (int i = 0; i < n; i++)
        if (bufs[i].held) {
            PyBuffer_Release(&bufs[i].b);
            bufs[i].held = 0;
        }
}

/* kind: 'b' int8, 'i' int32, 'q' int64, 'f' float32, 'e' float16 */
static int fmt_matches(const Py_buffer *b, char kind) {
    const char *f = b->format ? b->format : "B";
    while (*f == '@' || *f == '=' || *f == '<') f++;
    if (f[0] == '\0' || f[1] != '\0') return 0;
    switch (kind) {
    case 'b':
        return b->itemsize == 1 && f[0] == 'b';
    case 'i':
        return b->itemsize == 4 && (f[0] == 'i' || f[0] == 'l');
    case 'q':
        return b->itemsize == 8 && (f[0] == 'q' || f[0] == 'l');
    case 'f':
        return b->itemsize == 4 && f[0] == 'f';
    case 'e':
        return b->itemsize == 2 && f[0] == 'e';
    }
    return 0;
}

static const char *kind_name(char kind) {
    switch (kind) {
    case 'b':
        return "int8";
    case 'i':
        return "int32";
    case 'q':
        return "int64";
    case 'f':
        return "float32";
    case 'e':
        return "float16";
    }
    return "?";
}

/* Gets a buffer of `ndim` dimensions and dtype `kind`; inner: how many trailing dimensions must be
 * C-contiguous (the leading stride may be anything >= 0, a multiple of the itemsize). Errors name the argument
 * `base`, or `base[idx]` when idx >= 0 (formatted only on the error path: this runs on every kernel call). */
static int get_buf_idx(PyObject *obj, buf_t *out, const char *base, int idx, char kind, int ndim, int writable,
                       int inner) {
    char name[64];
#define NAME() (idx >= 0 ? (snprintf(name, sizeof name, "%s[%d]", base, idx), name) : base)
    int flags = PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &out->b, flags) != 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected a%s %s array", NAME(), writable ? " writable" : "",
                     kind_name(kind));
        return -1;
    }
    out->held = 1;
    Py_buffer *b = &out->b;
    if (!fmt_matches(b, kind)) {
        PyErr_Format(PyExc_TypeError, "%s: expected dtype %s, got format '%s'", NAME(), kind_name(kind),
                     b->format ? b->format : "B");
        return -1;
    }
    if (b->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: expected %d dimensions, got %d", NAME(), ndim, b->ndim);
        return -1;
    }
    /* trailing `inner` dims contiguous */
    Py_ssize_t expect = b->itemsize;
    for (int d = ndim - 1; d >= ndim - inner && d >= 0; d--) {
        if (b->shape[d] > 1 && b->strides[d] != expect) {
            PyErr_Format(PyExc_ValueError, "%s: dimension %d must be contiguous (stride %zd, expected %zd)",
                         NAME(), d, b->strides[d], expect);
            return -1;
        }
        expect *= b->shape[d];
    }
    for (int d = 0; d < ndim - inner; d++) {
        if (b->shape[d] > 1 && (b->strides[d] < 0 || b->strides[d] % b->itemsize != 0)) {
            PyErr_Format(PyExc_ValueError, "%s: unsupported stride %zd on dimension %d", NAME(), b->strides[d], d);
            return -1;
        }
    }
#undef NAME
    return 0;
}

static int get_buf(PyObject *obj, buf_t *out, const char *name, char kind, int ndim, int writable, int inner) {
    return get_buf_idx(obj, out, name, -1, kind, ndim, writable, inner);
}

/* Row stride in elements of a 2-D (or leading dim of an N-D) buffer; rows may not overlap the inner block. */
static int64_t row_stride(const Py_buffer *b, int64_t inner_elems) {
    if (b->shape[0] <= 1) return inner_elems;
    return (int64_t)(b->strides[0] / b->itemsize);
}

static int check_rows(const Py_buffer *b, const char *name, int64_t inner_elems) {
    if (b->shape[0] > 1 && row_stride(b, inner_elems) < inner_elems) {
        PyErr_Format(PyExc_ValueError, "%s: rows overlap (row stride %zd bytes)", name, b->strides[0]);
        return -1;
    }
    return 0;
}

#define SHAPE(buf, d) ((int64_t)(buf).b.shape[d])
#define FAIL(...)                                                                                              \
    do {                                                                                                       \
        PyErr_Format(PyExc_ValueError, __VA_ARGS__);                                                           \
        goto fail;                                                                                             \
    } while (0)

static PyObject *gemm_failed(void) {
    PyErr_SetString(PyExc_MemoryError, "int8 GEMM: out of memory for the packed activations or a task's scratch");
    return NULL;
}

static PyObject *py_gemm_s8s8_s32(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *oa, *ob, *oo;
    if (!PyArg_ParseTuple(args, "OOO", &oa, &ob, &oo)) return NULL;
    buf_t B[3];
    memset(B, 0, sizeof(B));
    if (get_buf(oa, &B[0], "a", 'b', 2, 0, 1) || get_buf(ob, &B[1], "b", 'b', 2, 0, 1) ||
        get_buf(oo, &B[2], "out", 'i', 2, 1, 1))
        goto fail;
    int64_t M = SHAPE(B[0], 0), K = SHAPE(B[0], 1), N = SHAPE(B[1], 0);
    if (SHAPE(B[1], 1) != K) FAIL("int8 GEMM shape mismatch: a (%lld, %lld) vs b (%lld, %lld)", (long long)M,
                                  (long long)K, (long long)N, (long long)SHAPE(B[1], 1));
    if (SHAPE(B[2], 0) != M || SHAPE(B[2], 1) != N) FAIL("out must have shape (%lld, %lld)", (long long)M, (long long)N);
    if (K > MAX_K) FAIL("K = %lld exceeds %d, where int32 sums could overflow", (long long)K, MAX_K);
    if (check_rows(&B[0].b, "a", K) || check_rows(&B[1].b, "b", K) || check_rows(&B[2].b, "out", N)) goto fail;
    gemm_mat mt = {0};
    mt.w = (const int8_t *)B[1].b.buf;
    mt.ldw = row_stride(&B[1].b, K);
    mt.N = N;
    mt.out_i = (int32_t *)B[2].b.buf;
    mt.ldo = row_stride(&B[2].b, N);
    gemm_ctx c = {0};
    c.a = (const int8_t *)B[0].b.buf;
    c.lda = row_stride(&B[0].b, K);
    c.M = M;
    c.K = K;
    c.n_mats = 1;
    c.mats = &mt;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = gemm_run(&c);
    Py_END_ALLOW_THREADS
    buf_release(B, 3);
    if (rc != 0) return gemm_failed();
    Py_RETURN_NONE;
fail:
    buf_release(B, 3);
    return NULL;
}

/* Checks x_q (M, K) int8 and x_scale (M,) float32 of a linear call into B[0..1]. */
static int linear_input(const char *fn, PyObject *ox, PyObject *oxs, buf_t *B, int64_t *M, int64_t *K) {
    if (get_buf(ox, &B[0], "x_q", 'b', 2, 0, 1) || get_buf(oxs, &B[1], "x_scale", 'f', 1, 0, 1)) return -1;
    *M = SHAPE(B[0], 0);
    *K = SHAPE(B[0], 1);
    if (SHAPE(B[1], 0) != *M) {
        PyErr_Format(PyExc_ValueError, "%s: x_scale must have shape (%lld,)", fn, (long long)*M);
        return -1;
    }
    if (*K > MAX_K) {
        PyErr_Format(PyExc_ValueError, "%s: K = %lld exceeds %d, where int32 sums could overflow", fn, (long long)*K,
                     MAX_K);
        return -1;
    }
    return check_rows(&B[0].b, "x_q", *K);
}

/* Checks one matrix of a linear call (w, w_scale, bias or None, out) against x_q's (M, K) into B[0..3] and
 * fills mt. idx < 0: the plain names (linear_s8), else ws[idx], w_scales[idx], ... (linear_s8_multi). */
static int linear_matrix(const char *fn, int idx, PyObject *ow, PyObject *ows, PyObject *obias, PyObject *oo,
                         int64_t M, int64_t K, buf_t *B, gemm_mat *mt) {
    const char *bw = idx >= 0 ? "ws" : "w", *bs = idx >= 0 ? "w_scales" : "w_scale";
    const char *bb = idx >= 0 ? "biases" : "bias", *bo = idx >= 0 ? "outs" : "out";
    const int has_bias = obias != Py_None;
    if (get_buf_idx(ow, &B[0], bw, idx, 'b', 2, 0, 1) || get_buf_idx(ows, &B[1], bs, idx, 'f', 1, 0, 1) ||
        (has_bias && get_buf_idx(obias, &B[2], bb, idx, 'f', 1, 0, 1)) ||
        get_buf_idx(oo, &B[3], bo, idx, 'f', 2, 1, 1))
        return -1;
    /* Names for the messages below (error paths only). */
    char nw[32], ns[32], nbias[32], no[32];
#define ARGNAME(dst, base) (idx >= 0 ? (snprintf(dst, sizeof dst, "%s[%d]", base, idx), dst) : base)
    const int64_t N = SHAPE(B[0], 0);
    if (SHAPE(B[0], 1) != K) {
        PyErr_Format(PyExc_ValueError, "%s: x_q is (%lld, %lld) but %s is (%lld, %lld)", fn, (long long)M,
                     (long long)K, ARGNAME(nw, bw), (long long)N, (long long)SHAPE(B[0], 1));
        return -1;
    }
    if (SHAPE(B[1], 0) != N) {
        PyErr_Format(PyExc_ValueError, "%s: %s must have shape (%lld,)", fn, ARGNAME(ns, bs), (long long)N);
        return -1;
    }
    if (has_bias && SHAPE(B[2], 0) != N) {
        PyErr_Format(PyExc_ValueError, "%s: %s must have shape (%lld,)", fn, ARGNAME(nbias, bb), (long long)N);
        return -1;
    }
    if (SHAPE(B[3], 0) != M || SHAPE(B[3], 1) != N) {
        PyErr_Format(PyExc_ValueError, "%s: %s must have shape (%lld, %lld)", fn, ARGNAME(no, bo), (long long)M,
                     (long long)N);
        return -1;
    }
    if (SHAPE(B[0], 0) > 1 && row_stride(&B[0].b, K) < K) {
        check_rows(&B[0].b, ARGNAME(nw, bw), K); /* raises */
        return -1;
    }
    mt->w = (const int8_t *)B[0].b.buf;
    mt->ldw = row_stride(&B[0].b, K);
    mt->N = N;
    mt->out_f = (float *)B[3].b.buf;
    mt->ldo = row_stride(&B[3].b, N);
    if (M > 1 && mt->ldo < N && mt->ldo != 0) {
        PyErr_Format(PyExc_ValueError, "%s: %s rows overlap", fn, ARGNAME(no, bo));
        return -1;
    }
    mt->ws = (const float *)B[1].b.buf;
    mt->bias = has_bias ? (const float *)B[2].b.buf : NULL;
#undef ARGNAME
    return 0;
}

static PyObject *py_linear_s8(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ox, *oxs, *ow, *ows, *obias, *oo;
    if (!PyArg_ParseTuple(args, "OOOOOO", &ox, &oxs, &ow, &ows, &obias, &oo)) return NULL;
    buf_t B[6];
    memset(B, 0, sizeof(B));
    int64_t M, K;
    gemm_mat mt = {0};
    if (linear_input("linear_s8", ox, oxs, B, &M, &K) ||
        linear_matrix("linear_s8", -1, ow, ows, obias, oo, M, K, B + 2, &mt)) {
        buf_release(B, 6);
        return NULL;
    }
    gemm_ctx c = {0};
    c.a = (const int8_t *)B[0].b.buf;
    c.lda = row_stride(&B[0].b, K);
    c.M = M;
    c.K = K;
    c.xs = (const float *)B[1].b.buf;
    c.n_mats = 1;
    c.mats = &mt;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = gemm_run(&c);
    Py_END_ALLOW_THREADS
    buf_release(B, 6);
    if (rc != 0) return gemm_failed();
    Py_RETURN_NONE;
}

#define MULTI_MAX 1024 /* matrices per linear_s8_multi call */
#define MULTI_SMALL 8  /* ... of which this many without a malloc */

static PyObject *py_linear_s8_multi(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ox, *oxs, *args4[4];
    static const char *const seq_names[4] = {"ws", "w_scales", "biases", "outs"};
    if (!PyArg_ParseTuple(args, "OOOOOO", &ox, &oxs, &args4[0], &args4[1], &args4[2], &args4[3])) return NULL;
    PyObject *seqs[4] = {NULL, NULL, NULL, NULL};
    buf_t B_small[2 + 4 * MULTI_SMALL], *B = B_small;
    gemm_mat mats_small[MULTI_SMALL], *mats = mats_small;
    PyObject *result = NULL;
    Py_ssize_t L = 0, n_bufs = 0;
    for (int s = 0; s < 4; s++) {
        if (PyList_Check(args4[s]) || PyTuple_Check(args4[s])) seqs[s] = PySequence_Fast(args4[s], "");
        if (seqs[s] == NULL) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "linear_s8_multi: %s must be a list or a tuple", seq_names[s]);
            goto done;
        }
    }
    L = PySequence_Fast_GET_SIZE(seqs[0]);
    for (int s = 1; s < 4; s++)
        if (PySequence_Fast_GET_SIZE(seqs[s]) != L) {
            PyErr_Format(PyExc_ValueError,
                         "linear_s8_multi: ws, w_scales, biases and outs must have the same length, got %zd, %zd, "
                         "%zd and %zd",
                         L, PySequence_Fast_GET_SIZE(seqs[1]), PySequence_Fast_GET_SIZE(seqs[2]),
                         PySequence_Fast_GET_SIZE(seqs[3]));
            goto done;
        }
    if (L > MULTI_MAX) {
        PyErr_Format(PyExc_ValueError, "linear_s8_multi: at most %d matrices per call, got %zd", MULTI_MAX, L);
        goto done;
    }
    if (L > MULTI_SMALL) {
        B = (buf_t *)malloc((size_t)(2 + 4 * L) * sizeof(buf_t));
        mats = (gemm_mat *)malloc((size_t)L * sizeof(gemm_mat));
        if (B == NULL || mats == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    n_bufs = 2 + 4 * L;
    memset(B, 0, (size_t)n_bufs * sizeof(buf_t));
    memset(mats, 0, (size_t)L * sizeof(gemm_mat));
    int64_t M, K;
    if (linear_input("linear_s8_multi", ox, oxs, B, &M, &K)) goto done;
    for (Py_ssize_t i = 0; i < L; i++) {
        if (linear_matrix("linear_s8_multi", (int)i, PySequence_Fast_GET_ITEM(seqs[0], i),
                          PySequence_Fast_GET_ITEM(seqs[1], i), PySequence_Fast_GET_ITEM(seqs[2], i),
                          PySequence_Fast_GET_ITEM(seqs[3], i), M, K, B + 2 + 4 * i, &mats[i]))
            goto done;
    }
    if (L > 0) {
        gemm_ctx c = {0};
        c.a = (const int8_t *)B[0].b.buf;
        c.lda = row_stride(&B[0].b, K);
        c.M = M;
        c.K = K;
        c.xs = (const float *)B[1].b.buf;
        c.n_mats = (int)L;
        c.mats = mats;
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = gemm_run(&c);
        Py_END_ALLOW_THREADS
        if (rc != 0) {
            gemm_failed();
            goto done;
        }
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    if (B != NULL) buf_release(B, (int)n_bufs);
    if (B != B_small) free(B);
    if (mats != mats_small) free(mats);
    for (int s = 0; s < 4; s++) Py_XDECREF(seqs[s]);
    return result;
}

/* Shared by quantize_rows / rmsnorm_quantize / rmsnorm / silu_mul_quantize. */
static PyObject *row_kernel(int kind, PyObject *ox, PyObject *ou, PyObject *ow, double eps, PyObject *oq,
                            PyObject *os, PyObject *oo) {
    buf_t B[6];
    memset(B, 0, sizeof(B));
    const char *xname = kind == ROW_SILU_Q ? "g" : "x";
    if (get_buf(ox, &B[0], xname, 'f', 2, 0, 1)) goto fail;
    int64_t M = SHAPE(B[0], 0), K = SHAPE(B[0], 1);
    if (check_rows(&B[0].b, xname, K)) goto fail;
    row_ctx c = {0};
    c.kind = kind;
    c.M = M;
    c.K = K;
    c.x = (const float *)B[0].b.buf;
    c.ldx = row_stride(&B[0].b, K);
    c.eps = (float)eps;
    if (kind == ROW_SILU_Q) {
        if (get_buf(ou, &B[1], "u", 'f', 2, 0, 1)) goto fail;
        if (SHAPE(B[1], 0) != M || SHAPE(B[1], 1) != K) FAIL("u must have the shape of g (%lld, %lld)", (long long)M,
                                                             (long long)K);
        c.u = (const float *)B[1].b.buf;
        c.ldu = row_stride(&B[1].b, K);
    }
    if (kind == ROW_RMSNORM_Q || kind == ROW_RMSNORM) {
        if (get_buf(ow, &B[2], "weight", 'f', 1, 0, 1)) goto fail;
        if (SHAPE(B[2], 0) != K) FAIL("weight must have shape (%lld,)", (long long)K);
        c.w = (const float *)B[2].b.buf;
        if (K == 0) FAIL("rmsnorm of an empty row");
    }
    if (kind == ROW_RMSNORM) {
        if (get_buf(oo, &B[3], "out", 'f', 2, 1, 1)) goto fail;
        if (SHAPE(B[3], 0) != M || SHAPE(B[3], 1) != K) FAIL("out must have shape (%lld, %lld)", (long long)M,
                                                             (long long)K);
        if (check_rows(&B[3].b, "out", K)) goto fail;
        c.out = (float *)B[3].b.buf;
        c.ldo = row_stride(&B[3].b, K);
    } else {
        if (get_buf(oq, &B[4], "q_out", 'b', 2, 1, 1) || get_buf(os, &B[5], "scale_out", 'f', 1, 1, 1)) goto fail;
        if (SHAPE(B[4], 0) != M || SHAPE(B[4], 1) != K) FAIL("q_out must have shape (%lld, %lld)", (long long)M,
                                                             (long long)K);
        if (SHAPE(B[5], 0) != M) FAIL("scale_out must have shape (%lld,)", (long long)M);
        if (check_rows(&B[4].b, "q_out", K)) goto fail;
        c.q = (int8_t *)B[4].b.buf;
        c.ldq = row_stride(&B[4].b, K);
        c.scale = (float *)B[5].b.buf;
    }
    Py_BEGIN_ALLOW_THREADS
    row_run(&c);
    Py_END_ALLOW_THREADS
    buf_release(B, 6);
    if (atomic_exchange(&scratch_failed, 0)) return PyErr_NoMemory();
    Py_RETURN_NONE;
fail:
    buf_release(B, 6);
    return NULL;
}

static PyObject *py_quantize_rows(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ox, *oq, *os;
    if (!PyArg_ParseTuple(args, "OOO", &ox, &oq, &os)) return NULL;
    return row_kernel(ROW_QUANTIZE, ox, NULL, NULL, 0.0, oq, os, NULL);
}

static PyObject *py_rmsnorm_quantize(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ox, *ow, *oq, *os;
    double eps;
    if (!PyArg_ParseTuple(args, "OOdOO", &ox, &ow, &eps, &oq, &os)) return NULL;
    return row_kernel(ROW_RMSNORM_Q, ox, NULL, ow, eps, oq, os, NULL);
}

static PyObject *py_rmsnorm(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ox, *ow, *oo;
    double eps;
    if (!PyArg_ParseTuple(args, "OOdO", &ox, &ow, &eps, &oo)) return NULL;
    return row_kernel(ROW_RMSNORM, ox, NULL, ow, eps, NULL, NULL, oo);
}

static PyObject *py_silu_mul_quantize(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *og, *ou, *oq, *os;
    if (!PyArg_ParseTuple(args, "OOOO", &og, &ou, &oq, &os)) return NULL;
    return row_kernel(ROW_SILU_Q, og, ou, NULL, 0.0, oq, os, NULL);
}

static PyObject *py_attention(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *oq, *ok, *ov, *orows, *ostart, *ooff, *oslots, *oo;
    if (!PyArg_ParseTuple(args, "OOOOOOOO", &oq, &ok, &ov, &orows, &ostart, &ooff, &oslots, &oo)) return NULL;
    buf_t B[8];
    memset(B, 0, sizeof(B));
    att_task *tasks = NULL;
    if (get_buf(oq, &B[0], "q", 'f', 3, 0, 2) || get_buf(ok, &B[1], "k_cache", 'e', 3, 0, 3) ||
        get_buf(ov, &B[2], "v_cache", 'e', 3, 0, 3) || get_buf(orows, &B[3], "seq_rows", 'q', 1, 0, 1) ||
        get_buf(ostart, &B[4], "seq_start_pos", 'q', 1, 0, 1) || get_buf(ooff, &B[5], "slot_offsets", 'q', 1, 0, 1) ||
        get_buf(oslots, &B[6], "slots", 'q', 1, 0, 1) || get_buf(oo, &B[7], "out", 'f', 3, 1, 2))
        goto fail;
    int64_t T = SHAPE(B[0], 0), Hq = SHAPE(B[0], 1), D = SHAPE(B[0], 2);
    int64_t S = SHAPE(B[1], 0), Hkv = SHAPE(B[1], 1);
    if (SHAPE(B[2], 0) != S || SHAPE(B[2], 1) != Hkv || SHAPE(B[2], 2) != SHAPE(B[1], 2))
        FAIL("attention: v_cache shape differs from k_cache");
    if (SHAPE(B[1], 2) != D) FAIL("attention: head_dim of q (%lld) differs from the cache's (%lld)", (long long)D,
                                  (long long)SHAPE(B[1], 2));
    if (SHAPE(B[7], 0) != T || SHAPE(B[7], 1) != Hq || SHAPE(B[7], 2) != D) FAIL("attention: out must have q's shape");
    if (D <= 0 || D % 8 != 0 || D > 1024) FAIL("attention: head_dim must be a multiple of 8 up to 1024, got %lld",
                                               (long long)D);
    if (Hkv <= 0 || Hq % Hkv != 0) FAIL("attention: %lld query heads do not split into %lld KV heads",
                                        (long long)Hq, (long long)Hkv);
    if (check_rows(&B[0].b, "q", Hq * D) || check_rows(&B[7].b, "out", Hq * D)) goto fail;
    int64_t n_seqs = SHAPE(B[4], 0);
    if (SHAPE(B[3], 0) != n_seqs + 1 || SHAPE(B[5], 0) != n_seqs + 1)
        FAIL("attention: seq_rows and slot_offsets need n_seqs + 1 = %lld entries", (long long)(n_seqs + 1));
    const int64_t *rows = (const int64_t *)B[3].b.buf, *start = (const int64_t *)B[4].b.buf;
    const int64_t *off = (const int64_t *)B[5].b.buf, *slots = (const int64_t *)B[6].b.buf;
    int64_t n_slots = SHAPE(B[6], 0);
    /* unit strides are guaranteed for 1-D buffers by get_buf(inner=1) */
    int64_t group = Hq / Hkv;
    /* Rows per task: a converted key chunk is shared by R rows x group heads (about 64 of them: the fp16 -> f32
     * conversion of a chunk, once per task, then costs ~1/64 of the arithmetic on it). */
    int64_t R = group >= 64 ? 1 : 64 / group;
    int64_t n_tiles = 0;
    for (int64_t i = 0; i < n_seqs; i++) {
        int64_t r0 = rows[i], r1 = rows[i + 1];
        if (r0 < 0 || r1 < r0 || r1 > T) FAIL("attention: sequence %lld rows [%lld, %lld) outside [0, %lld)", (long long)i,
                                              (long long)r0, (long long)r1, (long long)T);
        if (i > 0 && r0 < rows[i - 1]) FAIL("attention: seq_rows must be non-decreasing");
        if (start[i] < 0) FAIL("attention: negative start position");
        int64_t o0 = off[i], o1 = off[i + 1];
        if (o0 < 0 || o1 < o0 || o1 > n_slots) FAIL("attention: slot_offsets out of range");
        if (o1 - o0 != start[i] + (r1 - r0))
            FAIL("attention: sequence %lld has %lld slots, needs start_pos + rows = %lld", (long long)i,
                 (long long)(o1 - o0), (long long)(start[i] + (r1 - r0)));
        for (int64_t j = o0; j < o1; j++)
            if (slots[j] < 0 || slots[j] >= S) FAIL("attention: slot %lld outside the cache (%lld slots)",
                                                    (long long)slots[j], (long long)S);
        n_tiles += (r1 - r0 + R - 1) / R;
    }
    /* KV heads per task: a decode row (one row of its sequence) takes all of them when there are enough such
     * tasks to keep every thread busy, so a slot's row of the cache is read in one stretch; a prefill tile
     * takes one (its keys are hot in the cache, and its scratch stays small). */
    int64_t kv_groups = (8 * (int64_t)pool.want_threads + (n_tiles > 0 ? n_tiles : 1) - 1) / (n_tiles > 0 ? n_tiles : 1);
    if (kv_groups > Hkv) kv_groups = Hkv;
    if (kv_groups < 1) kv_groups = 1;
    int64_t kv_per_decode = (Hkv + kv_groups - 1) / kv_groups;
    int64_t n_tasks = 0;
    for (int64_t i = 0; i < n_seqs; i++) {
        int64_t nr = rows[i + 1] - rows[i];
        int64_t per = nr == 1 ? kv_per_decode : 1;
        n_tasks += ((nr + R - 1) / R) * ((Hkv + per - 1) / per);
    }
    if (n_tasks > 0) {
        tasks = (att_task *)malloc((size_t)n_tasks * sizeof(att_task));
        if (tasks == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        /* Longest tiles first (the last rows of each sequence see the most keys) for a better balance. */
        int64_t t = 0;
        for (int64_t i = 0; i < n_seqs; i++) {
            int64_t r0 = rows[i], r1 = rows[i + 1];
            int64_t n_tiles = (r1 - r0 + R - 1) / R;
            int64_t per = r1 - r0 == 1 ? kv_per_decode : 1;
            for (int64_t ti = n_tiles - 1; ti >= 0; ti--) {
                int64_t a = r0 + ti * R, b = a + R < r1 ? a + R : r1;
                for (int64_t h = 0; h < Hkv; h += per) tasks[t++] = (att_task){i, a, b, h, h + per < Hkv ? h + per : Hkv};
            }
        }
    }
    att_ctx c = {0};
    c.q = (const float *)B[0].b.buf;
    c.ldq = row_stride(&B[0].b, Hq * D);
    c.out = (float *)B[7].b.buf;
    c.ldo = row_stride(&B[7].b, Hq * D);
    c.kc = (const uint16_t *)B[1].b.buf;
    c.vc = (const uint16_t *)B[2].b.buf;
    c.Hq = Hq;
    c.Hkv = Hkv;
    c.D = D;
    c.group = group;
    c.seq_rows = rows;
    c.start_pos = start;
    c.slot_off = off;
    c.slots = slots;
    c.scale = (float)(1.0 / sqrt((double)D));
    c.tasks = tasks;
    int64_t work = 0; /* multiply-adds, roughly: tiny calls are not worth waking a worker */
    for (int64_t i = 0; i < n_seqs; i++) work += (rows[i + 1] - rows[i]) * (off[i + 1] - off[i]) * Hq * D;
    Py_BEGIN_ALLOW_THREADS
    if (work < 256 * 1024) {
        for (int64_t i = 0; i < n_tasks; i++) att_task_run(&c, i);
    } else {
        pool_run(att_task_run, &c, n_tasks);
    }
    Py_END_ALLOW_THREADS
    free(tasks);
    buf_release(B, 8);
    if (atomic_exchange(&scratch_failed, 0)) return PyErr_NoMemory();
    Py_RETURN_NONE;
fail:
    free(tasks);
    buf_release(B, 8);
    return NULL;
}

typedef struct {
    const float *k, *v;
    int64_t ldk, ldv;
    uint16_t *kc, *vc;
    const int64_t *slots;
    int64_t T, row, rows_per_task;
} kv_store_ctx;

static void kv_store_task(void *vctx, int64_t task) {
    const kv_store_ctx *c = (const kv_store_ctx *)vctx;
    int64_t t0 = task * c->rows_per_task, t1 = t0 + c->rows_per_task < c->T ? t0 + c->rows_per_task : c->T;
    for (int64_t t = t0; t < t1; t++) {
        f32_to_f16_row(c->k + t * c->ldk, c->kc + c->slots[t] * c->row, c->row);
        f32_to_f16_row(c->v + t * c->ldv, c->vc + c->slots[t] * c->row, c->row);
    }
}

/* Does a slot appear twice? (Only then does the order of the rows' writes matter.) slots are in [0, S). */
static int has_duplicate_slots(const int64_t *slots, int64_t T, int64_t S) {
    if (T < 2) return 0;
    if (T <= 64) {
        for (int64_t i = 1; i < T; i++)
            for (int64_t j = 0; j < i; j++)
                if (slots[i] == slots[j]) return 1;
        return 0;
    }
    uint8_t *seen = (uint8_t *)calloc((size_t)(S + 7) / 8, 1);
    if (seen == NULL) return 1; /* no memory for the check: take the serial order */
    int dup = 0;
    for (int64_t i = 0; i < T && !dup; i++) {
        uint64_t b = (uint64_t)slots[i];
        if (seen[b >> 3] & (1u << (b & 7))) dup = 1;
        seen[b >> 3] |= (uint8_t)(1u << (b & 7));
    }
    free(seen);
    return dup;
}

static PyObject *py_kv_store(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ok, *ov, *okc, *ovc, *oslots;
    if (!PyArg_ParseTuple(args, "OOOOO", &ok, &ov, &okc, &ovc, &oslots)) return NULL;
    buf_t B[5];
    memset(B, 0, sizeof(B));
    if (get_buf(ok, &B[0], "k", 'f', 3, 0, 2) || get_buf(ov, &B[1], "v", 'f', 3, 0, 2) ||
        get_buf(okc, &B[2], "k_cache", 'e', 3, 1, 3) || get_buf(ovc, &B[3], "v_cache", 'e', 3, 1, 3) ||
        get_buf(oslots, &B[4], "slots", 'q', 1, 0, 1))
        goto fail;
    int64_t T = SHAPE(B[0], 0), H = SHAPE(B[0], 1), D = SHAPE(B[0], 2), S = SHAPE(B[2], 0);
    if (SHAPE(B[1], 0) != T || SHAPE(B[1], 1) != H || SHAPE(B[1], 2) != D) FAIL("kv_store: v must have k's shape");
    if (SHAPE(B[2], 1) != H || SHAPE(B[2], 2) != D || SHAPE(B[3], 0) != S || SHAPE(B[3], 1) != H ||
        SHAPE(B[3], 2) != D)
        FAIL("kv_store: caches must be (S, %lld, %lld)", (long long)H, (long long)D);
    if (SHAPE(B[4], 0) != T) FAIL("kv_store: slots must have shape (%lld,)", (long long)T);
    if (check_rows(&B[0].b, "k", H * D) || check_rows(&B[1].b, "v", H * D)) goto fail;
    const int64_t *slots = (const int64_t *)B[4].b.buf;
    for (int64_t t = 0; t < T; t++)
        if (slots[t] < 0 || slots[t] >= S) FAIL("kv_store: slot %lld outside the cache (%lld slots)", (long long)slots[t],
                                                (long long)S);
    {
        kv_store_ctx c;
        c.k = (const float *)B[0].b.buf;
        c.v = (const float *)B[1].b.buf;
        c.ldk = row_stride(&B[0].b, H * D);
        c.ldv = row_stride(&B[1].b, H * D);
        c.kc = (uint16_t *)B[2].b.buf;
        c.vc = (uint16_t *)B[3].b.buf;
        c.slots = slots;
        c.T = T;
        c.row = H * D;
        /* A prefill's rows (512 x 32 heads x 64) are split over the threads; a decode step's few rows are not
         * worth waking a worker. Rows write disjoint slots, unless a slot repeats: then one task writes all
         * rows in order, so the last row wins, as in numpy's assignment. */
        int64_t elems = T * H * D;
        int64_t tasks = elems < 64 * 1024 ? 1 : split_tasks(T, 1, (int64_t)pool.want_threads * 4);
        c.rows_per_task = (T + tasks - 1) / (tasks > 0 ? tasks : 1);
        if (tasks > 1 && has_duplicate_slots(slots, T, S)) c.rows_per_task = T; /* numpy's order: last wins */
        tasks = c.rows_per_task > 0 ? (T + c.rows_per_task - 1) / c.rows_per_task : 0;
        Py_BEGIN_ALLOW_THREADS
        pool_run(kv_store_task, &c, tasks);
        Py_END_ALLOW_THREADS
    }
    buf_release(B, 5);
    Py_RETURN_NONE;
fail:
    buf_release(B, 5);
    return NULL;
}

static PyObject *py_rope_inplace(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ox, *opos, *ocos, *osin;
    if (!PyArg_ParseTuple(args, "OOOO", &ox, &opos, &ocos, &osin)) return NULL;
    buf_t B[4];
    memset(B, 0, sizeof(B));
    if (get_buf(ox, &B[0], "x", 'f', 3, 1, 2) || get_buf(opos, &B[1], "positions", 'q', 1, 0, 1) ||
        get_buf(ocos, &B[2], "cos", 'f', 2, 0, 2) || get_buf(osin, &B[3], "sin", 'f', 2, 0, 2))
        goto fail;
    int64_t T = SHAPE(B[0], 0), H = SHAPE(B[0], 1), D = SHAPE(B[0], 2), P = SHAPE(B[2], 0);
    if (D % 2 != 0) FAIL("rope: head_dim must be even");
    if (SHAPE(B[2], 1) != D / 2 || SHAPE(B[3], 0) != P || SHAPE(B[3], 1) != D / 2)
        FAIL("rope: cos and sin must be (max_context, %lld)", (long long)(D / 2));
    if (SHAPE(B[1], 0) != T) FAIL("rope: positions must have shape (%lld,)", (long long)T);
    if (check_rows(&B[0].b, "x", H * D)) goto fail;
    const int64_t *pos = (const int64_t *)B[1].b.buf;
    for (int64_t t = 0; t < T; t++)
        if (pos[t] < 0 || pos[t] >= P) FAIL("rope: position %lld outside the tables (%lld)", (long long)pos[t],
                                            (long long)P);
    {
        float *x = (float *)B[0].b.buf;
        int64_t ldx = row_stride(&B[0].b, H * D);
        const float *cs = (const float *)B[2].b.buf, *sn = (const float *)B[3].b.buf;
        Py_BEGIN_ALLOW_THREADS
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < H; h++)
                rope_row(x + t * ldx + h * D, cs + pos[t] * (D / 2), sn + pos[t] * (D / 2), D / 2);
        Py_END_ALLOW_THREADS
    }
    buf_release(B, 4);
    Py_RETURN_NONE;
fail:
    buf_release(B, 4);
    return NULL;
}

static PyObject *py_set_num_threads(PyObject *self, PyObject *args) {
    (void)self;
    int n;
    if (!PyArg_ParseTuple(args, "i", &n)) return NULL;
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "num_threads must be >= 1");
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = pool_set_threads(n);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        PyErr_Format(PyExc_RuntimeError, "could not start %d worker threads (running with %d threads)", n - 1,
                     pool.want_threads);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *py_num_threads(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyLong_FromLong(pool.want_threads);
}

static PyObject *py_set_spin_us(PyObject *self, PyObject *args) {
    (void)self;
    double us;
    if (!PyArg_ParseTuple(args, "d", &us)) return NULL;
    if (!(us >= 0.0 && us <= 1e6)) {
        PyErr_SetString(PyExc_ValueError, "spin_us must be in [0, 1e6]");
        return NULL;
    }
    pool.spin_ns = (int64_t)(us * 1000.0);
    Py_RETURN_NONE;
}

static PyObject *py_isa(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyUnicode_FromString(active_isa == ISA_AVX2 ? "avx2" : "generic");
}

static PyObject *py_set_isa(PyObject *self, PyObject *args) {
    (void)self;
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    if (strcmp(name, "generic") == 0) {
        active_isa = ISA_GENERIC;
    } else if (strcmp(name, "avx2") == 0 && best_isa == ISA_AVX2) {
        active_isa = ISA_AVX2;
    } else if (strcmp(name, "best") == 0) {
        active_isa = best_isa;
    } else {
        PyErr_Format(PyExc_ValueError, "ISA '%s' is not available on this CPU", name);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"gemm_s8s8_s32", py_gemm_s8s8_s32, METH_VARARGS, "gemm_s8s8_s32(a, b, out): out = a @ b.T exactly (int32)."},
    {"linear_s8", py_linear_s8, METH_VARARGS,
     "linear_s8(x_q, x_scale, w, w_scale, bias, out): out = (acc * x_scale[:, None]) * w_scale (+ bias)."},
    {"linear_s8_multi", py_linear_s8_multi, METH_VARARGS,
     "linear_s8_multi(x_q, x_scale, ws, w_scales, biases, outs): linear_s8 for each matrix, one pool job."},
    {"quantize_rows", py_quantize_rows, METH_VARARGS, "quantize_rows(x, q_out, scale_out)"},
    {"rmsnorm_quantize", py_rmsnorm_quantize, METH_VARARGS, "rmsnorm_quantize(x, weight, eps, q_out, scale_out)"},
    {"rmsnorm", py_rmsnorm, METH_VARARGS, "rmsnorm(x, weight, eps, out)"},
    {"silu_mul_quantize", py_silu_mul_quantize, METH_VARARGS, "silu_mul_quantize(g, u, q_out, scale_out)"},
    {"attention", py_attention, METH_VARARGS,
     "attention(q, k_cache, v_cache, seq_rows, seq_start_pos, slot_offsets, slots, out)"},
    {"kv_store", py_kv_store, METH_VARARGS, "kv_store(k, v, k_cache, v_cache, slots)"},
    {"rope_inplace", py_rope_inplace, METH_VARARGS, "rope_inplace(x, positions, cos, sin)"},
    {"set_num_threads", py_set_num_threads, METH_VARARGS, "set_num_threads(n)"},
    {"num_threads", py_num_threads, METH_NOARGS, "num_threads() -> int"},
    {"set_spin_us", py_set_spin_us, METH_VARARGS, "set_spin_us(us): how long idle workers spin before sleeping"},
    {"isa", py_isa, METH_NOARGS, "isa() -> 'avx2' or 'generic'"},
    {"set_isa", py_set_isa, METH_VARARGS, "set_isa('generic' | 'avx2' | 'best') (for tests)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_native",
    .m_doc = "Exact int8 kernels and fp16-KV attention (see lpu_runtime/native.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    detect_isa();
    pthread_atfork(NULL, NULL, pool_atfork_child);
    const char *spin = getenv("LPU_SPIN_US");
    if (spin != NULL && *spin) {
        double us = atof(spin);
        if (us >= 0.0 && us <= 1e6) pool.spin_ns = (int64_t)(us * 1000.0);
    }
    return PyModule_Create(&moduledef);
}
