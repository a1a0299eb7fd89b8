/* The sparse x dense fully-connected kernel (float32, on pyskim's thread pool), on the vector types
 * of sconv_impl.h. Included by sparse_conv.pyx; everything here is static, and the Cython wrapper
 * validates every array before calling in. */
#ifndef PYSKIM_SFC_IMPL_H
#define PYSKIM_SFC_IMPL_H

#include "sconv_impl.h"

/* ---- sparse x dense fully-connected ----------------------------------------------------------
 * Y (M x N) = X (M x K) . W^T + bias, W as CSR (N rows, K columns). Batch 1: one dot product per
 * row (SpMV). Batch > 1: X is transposed once to XT (K x Mp, Mp = M rounded up to SC_VL, rows
 * 64-byte aligned) so that each nonzero W[n, k] is an aligned multiply-add of XT row k into the
 * register accumulators of output n (up to SC_FMT vectors of batch columns at a time).
 *
 * Column indices are 16-bit when K <= 65536 (every AlexNet / VGG classifier layer), else 32-bit: a
 * batch-1 product streams 6 instead of 8 bytes per nonzero from memory, and it is memory bound (fc6
 * of CaffeNet at 10% density: 29 MB per call). Every kernel below exists for both index types
 * (SC_DEF_FC_KERNELS). */

/* Batch 1 streams the weights from memory once per call, so the dot products prefetch them
 * SC_FC_PREFETCH nonzeros ahead of use (4 KiB of values): the hardware prefetcher alone left the
 * stream at 10-13 GB/s on one Xeon thread; with it fc6 of the pruned CaffeNet (22 MB) ran 1.4x
 * faster with scalar loads and 2x faster with gathers. */
#define SC_FC_PREFETCH 1024

/* Batched products keep T vectors of batch columns per output row in registers. A multiply-add
 * waits for the previous one into the same register (4 cycles on current cores, 2 issued per
 * cycle), so a tile of T < 8 vectors spreads its nonzeros round-robin over SC_FSETS(T) sets of
 * accumulators, summed at the end: at batch 16 (T = 1) one set made every nonzero wait for the last,
 * and four ran fc8 of the pruned CaffeNet 1.5x faster (fc6 and fc7, whose weights come from memory,
 * gained nothing). The weights are prefetched as at batch 1, but into L2. */
#define SC_FSETS(T) ((T) >= 8 ? 1 : (T) >= 4 ? 2 : (T) == 3 ? 3 : 4)

#define SC_DEF_FTILE(T, IDX, SUF)                                                              \
    static void sc_ftile_##T##SUF(const float *__restrict xt, int64_t Mp, const IDX *__restrict col, \
                                  const float *__restrict val, int64_t j0, int64_t j1, float b0,  \
                                  float *__restrict acc) {                                        \
        enum { S = SC_FSETS(T), V = T * SC_NPV };                                                 \
        sc_n a[S][V];                                                                             \
        SC_UNROLL for (int s = 0; s < S; ++s)                                                     \
            SC_UNROLL for (int v = 0; v < V; ++v) a[s][v] = (sc_n){0} + (s ? 0.0f : b0);          \
        int64_t j = j0;                                                                           \
        for (; j + 16 <= j1; j += 16) {                                                           \
            __builtin_prefetch(val + j + SC_FC_PREFETCH, 0, 2);                                   \
            __builtin_prefetch(col + j + SC_FC_PREFETCH, 0, 2);                                   \
            SC_UNROLL for (int u = 0; u < 16; ++u) {                                              \
                const float *p = xt + (int64_t)col[j + u] * Mp;                                   \
                const sc_n w = val[j + u] - (sc_n){0};                                            \
                SC_UNROLL for (int v = 0; v < V; ++v)                                             \
                    a[u % S][v] += w * *(const sc_n *)(p + SC_NL * v);                            \
            }                                                                                     \
        }                                                                                         \
        for (; j < j1; ++j) {                                                                     \
            const float *p = xt + (int64_t)col[j] * Mp;                                           \
            const sc_n w = val[j] - (sc_n){0};                                                    \
            SC_UNROLL for (int v = 0; v < V; ++v) a[0][v] += w * *(const sc_n *)(p + SC_NL * v);  \
        }                                                                                         \
        SC_UNROLL for (int s = 1; s < S; ++s)                                                     \
            SC_UNROLL for (int v = 0; v < V; ++v) a[0][v] += a[s][v];                             \
        SC_UNROLL for (int v = 0; v < V; ++v)((sc_n *)acc)[v] = a[0][v];                          \
    }

#if SC_FMT >= 8
#define SC_DEF_FTILES(IDX, SUF)                                                                 \
    SC_DEF_FTILE(1, IDX, SUF) SC_DEF_FTILE(2, IDX, SUF) SC_DEF_FTILE(3, IDX, SUF)                \
    SC_DEF_FTILE(4, IDX, SUF) SC_DEF_FTILE(5, IDX, SUF) SC_DEF_FTILE(6, IDX, SUF)                \
    SC_DEF_FTILE(7, IDX, SUF) SC_DEF_FTILE(8, IDX, SUF)                                          \
    typedef void (*sc_ftile_fn##SUF)(const float *, int64_t, const IDX *, const float *, int64_t,  \
                                     int64_t, float, float *);                                   \
    static const sc_ftile_fn##SUF sc_ftiles##SUF[SC_FMT + 1] = {                                 \
        0, sc_ftile_1##SUF, sc_ftile_2##SUF, sc_ftile_3##SUF, sc_ftile_4##SUF, sc_ftile_5##SUF,  \
        sc_ftile_6##SUF, sc_ftile_7##SUF, sc_ftile_8##SUF};
#elif SC_FMT >= 3
#define SC_DEF_FTILES(IDX, SUF)                                                                 \
    SC_DEF_FTILE(1, IDX, SUF) SC_DEF_FTILE(2, IDX, SUF) SC_DEF_FTILE(3, IDX, SUF)                \
    typedef void (*sc_ftile_fn##SUF)(const float *, int64_t, const IDX *, const float *, int64_t,  \
                                     int64_t, float, float *);                                   \
    static const sc_ftile_fn##SUF sc_ftiles##SUF[SC_FMT + 1] = {0, sc_ftile_1##SUF, sc_ftile_2##SUF, \
                                                                sc_ftile_3##SUF};
#else
#define SC_DEF_FTILES(IDX, SUF)                                                                 \
    SC_DEF_FTILE(1, IDX, SUF) SC_DEF_FTILE(2, IDX, SUF)                                          \
    typedef void (*sc_ftile_fn##SUF)(const float *, int64_t, const IDX *, const float *, int64_t,  \
                                     int64_t, float, float *);                                   \
    static const sc_ftile_fn##SUF sc_ftiles##SUF[SC_FMT + 1] = {0, sc_ftile_1##SUF, sc_ftile_2##SUF};
#endif

/* One fully-connected call: its arguments (see sc_fc), XT, and the iterations per pool task. The
 * column indices are col16 or col32 (the other is NULL). */
typedef struct {
    const float *x, *val, *bias;
    const int32_t *rowptr, *col32;
    const uint16_t *col16;
    int64_t M, K, N, Mp, chunk;
    int relu;
    float *y, *xt;
} sc_fc_t;


#if defined(__AVX512F__)
/* Whether the batch-1 dot products gather x with AVX-512 (Intel) or load it element by element
 * (AMD Zen, whose gathers are several times slower than scalar loads). */
static int sc_fc_gathers(void) {
    static int gathers = -1;
    if (gathers < 0) {
        __builtin_cpu_init();
        gathers = !__builtin_cpu_is("amd");
    }
    return gathers;
}

/* 16 column indices (n <= 16 of them, the rest of the lanes 0) as 32-bit lanes. */
static inline __m512i sc_cols_c16(const uint16_t *c, int n) {
    return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16((__mmask16)((1u << n) - 1), c));
}
static inline __m512i sc_cols_c32(const int32_t *c, int n) {
    return _mm512_maskz_loadu_epi32((__mmask16)((1u << n) - 1), c);
}
#endif

/* For one index type (suffix SUF): the register tiles; sc_dot (sum_j val[j] * x[col[j]]: with AVX-512
 * on Intel two vector sums of gathered x, else scalar loads with eight independent sums; either way
 * the weights prefetched ahead); and the pool task for outputs [task*chunk, (task+1)*chunk) (batch
 * 1: one sparse dot product each, else SC_FMT vectors of batch columns at a time). */
#if defined(__AVX512F__)
#define SC_DEF_GATHER_DOT(IDX, SUF)                                                               \
    static float sc_gdot##SUF(const float *__restrict x, const IDX *__restrict col,                \
                              const float *__restrict val, int64_t j0, int64_t j1) {              \
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();                                \
        int64_t j = j0;                                                                           \
        for (; j + 32 <= j1; j += 32) {                                                           \
            _mm_prefetch((const char *)(val + j + SC_FC_PREFETCH), _MM_HINT_T0);                  \
            _mm_prefetch((const char *)(val + j + SC_FC_PREFETCH + 16), _MM_HINT_T0);             \
            _mm_prefetch((const char *)(col + j + SC_FC_PREFETCH), _MM_HINT_T0);                  \
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(val + j),                                        \
                                 _mm512_i32gather_ps(sc_cols##SUF(col + j, 16), x, 4), a0);       \
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(val + j + 16),                                   \
                                 _mm512_i32gather_ps(sc_cols##SUF(col + j + 16, 16), x, 4), a1);  \
        }                                                                                         \
        for (; j < j1; j += 16) {                                                                 \
            const int n = j1 - j < 16 ? (int)(j1 - j) : 16;                                       \
            const __mmask16 m = (__mmask16)((1u << n) - 1);                                       \
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, val + j),                               \
                                 _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, sc_cols##SUF(col + j, n), \
                                                          x, 4), a0);                             \
        }                                                                                         \
        return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));                                       \
    }
#else
#define SC_DEF_GATHER_DOT(IDX, SUF)
#endif

#define SC_DEF_FC_KERNELS(IDX, SUF, FIELD)                                                        \
    SC_DEF_FTILES(IDX, SUF)                                                                       \
    SC_DEF_GATHER_DOT(IDX, SUF)                                                                   \
    __attribute__((optimize("no-tree-vectorize"))) static float sc_sdot##SUF(                     \
        const float *__restrict x, const IDX *__restrict col, const float *__restrict val,         \
        int64_t j0, int64_t j1) {                                                                 \
        float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                                    \
        int64_t j = j0;                                                                           \
        for (; j + 8 <= j1; j += 8) {                                                             \
            __builtin_prefetch(val + j + SC_FC_PREFETCH);                                         \
            __builtin_prefetch(col + j + SC_FC_PREFETCH);                                         \
            for (int k = 0; k < 8; ++k) s[k] += val[j + k] * x[col[j + k]];                       \
        }                                                                                         \
        for (; j < j1; ++j) s[0] += val[j] * x[col[j]];                                           \
        return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));                 \
    }                                                                                             \
    static inline float sc_dot##SUF(const float *__restrict x, const IDX *__restrict col,          \
                                    const float *__restrict val, int64_t j0, int64_t j1) {        \
        SC_IF_GATHERS(return sc_gdot##SUF(x, col, val, j0, j1));                                  \
        return sc_sdot##SUF(x, col, val, j0, j1);                                                 \
    }                                                                                             \
    static void sc_fc_task##SUF(void *ctx, int64_t task, int worker) {                            \
        const sc_fc_t *f = (const sc_fc_t *)ctx;                                                  \
        const IDX *col = f->FIELD;                                                                \
        float acc[SC_VL * SC_FMT] __attribute__((aligned(64)));                                   \
        const int64_t nvec = f->Mp / SC_VL;                                                       \
        const int64_t end = (task + 1) * f->chunk < f->N ? (task + 1) * f->chunk : f->N;          \
        (void)worker;                                                                             \
        for (int64_t nn = task * f->chunk; nn < end; ++nn) {                                      \
            const float b0 = f->bias ? f->bias[nn] : 0.0f;                                        \
            if (f->M == 1) {                                                                      \
                const float s = sc_dot##SUF(f->x, col, f->val, f->rowptr[nn], f->rowptr[nn + 1]) + b0; \
                f->y[nn] = f->relu && s < 0.0f ? 0.0f : s;                                        \
                continue;                                                                         \
            }                                                                                     \
            for (int64_t v0 = 0; v0 < nvec; v0 += SC_FMT) {                                       \
                const int tv = (int)(nvec - v0 < SC_FMT ? nvec - v0 : SC_FMT);                    \
                sc_ftiles##SUF[tv](f->xt + v0 * SC_VL, f->Mp, col, f->val, f->rowptr[nn],         \
                                   f->rowptr[nn + 1], b0, acc);                                   \
                const int64_t m1 = (v0 + tv) * SC_VL < f->M ? (v0 + tv) * SC_VL : f->M;           \
                for (int64_t m = v0 * SC_VL; m < m1; ++m) {                                       \
                    const float s = acc[m - v0 * SC_VL];                                          \
                    f->y[m * f->N + nn] = f->relu && s < 0.0f ? 0.0f : s;                         \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

#if defined(__AVX512F__)
#define SC_IF_GATHERS(stmt) if (sc_fc_gathers()) stmt
#else
#define SC_IF_GATHERS(stmt)
#endif

SC_DEF_FC_KERNELS(uint16_t, _c16, col16)
SC_DEF_FC_KERNELS(int32_t, _c32, col32)

/* XT = X^T zero-padded to Mp columns, on the calling thread: with AVX-512 in 16 x 16 blocks through
 * registers (sc_transpose16). It had been a float at a time in pool tasks of its own (a second fork
 * of the pool per call): batch-16 products of 1000 outputs or fewer now run 1.06-1.13x faster on
 * one thread. */
static void sc_fc_transpose(const sc_fc_t *f) {
#if defined(__AVX512F__)
    const sc_lane_perm_t pm = sc_lane_perms();
    for (int64_t m0 = 0; m0 < f->Mp; m0 += SC_VL) {
        for (int64_t k0 = 0; k0 < f->K; k0 += SC_VL) {
            const int nk = f->K - k0 < SC_VL ? (int)(f->K - k0) : SC_VL;
            const __mmask16 cols = sc_lane_range(0, nk);
            __m512 v[16];
            for (int i = 0; i < 16; ++i)
                v[i] = m0 + i < f->M ? _mm512_maskz_loadu_ps(cols, f->x + (m0 + i) * f->K + k0) : _mm512_setzero_ps();
            sc_transpose16(v, &pm);
            for (int j = 0; j < nk; ++j) _mm512_store_ps(f->xt + (k0 + j) * f->Mp + m0, v[j]);
        }
    }
#else
    for (int64_t k = 0; k < f->K; ++k) {
        float *d = f->xt + k * f->Mp;
        for (int64_t m = 0; m < f->M; ++m) d[m] = f->x[m * f->K + k];
        for (int64_t m = f->M; m < f->Mp; ++m) d[m] = 0.0f;
    }
#endif
}

/* Y on up to nthreads threads in tasks of 64 outputs; the column indices are col16 (16-bit) or, when
 * it is NULL, col32. Returns 0, or -1 when XT could not be allocated. (Batched tasks of 16 outputs
 * wrote 64-byte pieces of every row of Y, each sharing cache lines with the neighbouring tasks of
 * the other thread: at batch 16 GoogLeNet's 1024 -> 1000 classifier ran no faster on two threads
 * than on one, and runs 1.37x faster in tasks of 64; a 4096 x 4096 layer 1.78x instead of 1.29x.) */
static int sc_fc(const float *x, int M, int K, int N, const int32_t *rowptr, const uint16_t *col16,
                 const int32_t *col32, const float *val, const float *bias, int relu, float *y, int nthreads) {
    sc_fc_t f = {.x = x, .val = val, .bias = bias, .rowptr = rowptr, .col32 = col32, .col16 = col16, .M = M,
                 .K = K, .N = N, .chunk = 64, .relu = relu, .y = y};
    pk_task_fn task = col16 ? sc_fc_task_c16 : sc_fc_task_c32;
#if defined(__AVX512F__)
    (void)sc_fc_gathers(); /* decided here, before the workers read it */
#endif
    if (M == 1) {
        pk_parallel_for((f.N + 63) / 64, task, &f, nthreads);
        return 0;
    }
    f.Mp = ((int64_t)M + SC_VL - 1) / SC_VL * SC_VL;
    f.xt = (float *)aligned_alloc(64, sizeof(float) * f.Mp * (K > 0 ? K : 1));
    if (!f.xt) return -1;
    sc_fc_transpose(&f);
    f.chunk = 64;
    pk_parallel_for((f.N + 63) / 64, task, &f, nthreads);
    free(f.xt);
    return 0;
}

#endif /* PYSKIM_SFC_IMPL_H */
