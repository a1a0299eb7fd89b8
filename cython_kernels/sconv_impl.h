/* Direct sparse convolution and sparse fully-connected kernels (float32, OpenMP).
 *
 * Included by sparse_conv.pyx; everything here is static. The Cython wrapper validates every
 * array and geometry before calling in, so these functions do no checking of their own.
 *
 * Convolution ("stride-1 problem" form). The input of one image is a prepared buffer: channel c,
 * phase (rh, rw) of the stride, row i, column j at ((c*S + rh*sw + rw)*Hq + i)*Wq + j holding
 * padded[c][i*sh + rh][j*sw + rw] (zero outside the padded image), S = sh*sw. For stride 1 this is
 * the conventional zero-padded copy C x Hp x Wp. A weight (oc, ic, kh, kw) becomes one column
 * offset; output (y, x) reads buffer[offset + y*Wq + x] for every nonzero. The output plane is
 * therefore computed as a flat run of L = (OH-1)*Wq + OW positions p = y*Wq + x (the Wq - OW
 * positions at the end of each row are computed and thrown away), in vectors of SC_VL floats:
 * every nonzero is one broadcast multiply-add per vector, with unaligned loads and no index
 * arithmetic. Work item = (image, group, block of OCB output channels, tile of T vectors); the T
 * accumulators of one output channel stay in registers while its nonzeros of one input-channel
 * block are applied (SkimCaffe's register tile); partial sums over input-channel blocks live in a
 * per-thread scratch that stays in L1, so a block of input channels is reused by all OCB output
 * channels before the next block is touched. Bias initialises the scratch; ReLU is applied when
 * the finished tile is written out.
 */
#ifndef PYSKIM_SCONV_IMPL_H
#define PYSKIM_SCONV_IMPL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SC_VL 16 /* floats per tile vector: the layout unit, the same on every ISA */

typedef float sc_v __attribute__((vector_size(64)));
typedef float sc_vu __attribute__((vector_size(64), aligned(4), may_alias));

#if defined(__AVX512F__)
#define SC_TMAX 28 /* accumulators in 32 zmm registers */
#define SC_FMT 8
#elif defined(__AVX__)
#define SC_TMAX 6 /* 12 of 16 ymm registers */
#define SC_FMT 3
#else
#define SC_TMAX 3 /* 12 of 16 xmm registers */
#define SC_FMT 2
#endif

#define SC_PRAGMA(x) _Pragma(#x)
#define SC_UNROLL SC_PRAGMA(GCC unroll 32)

static inline sc_v sc_loadu(const float *p) { return *(const sc_vu *)p; }

/* acc[0..T) += sum_{j0 <= j < j1} val[j] * in[col[j] + SC_VL*t ..], T vectors held in registers. */
#define SC_DEF_TILE(T)                                                                       \
    static void sc_tile_##T(const float *__restrict in, const int32_t *__restrict col,       \
                            const float *__restrict val, int64_t j0, int64_t j1,             \
                            float *__restrict acc) {                                         \
        sc_v a[T];                                                                           \
        SC_UNROLL for (int t = 0; t < T; ++t) a[t] = ((const sc_v *)acc)[t];                 \
        for (int64_t j = j0; j < j1; ++j) {                                                  \
            const float *p = in + col[j];                                                    \
            const sc_v w = val[j] - (sc_v){0};                                               \
            SC_UNROLL for (int t = 0; t < T; ++t) a[t] += w * sc_loadu(p + SC_VL * t);       \
        }                                                                                    \
        SC_UNROLL for (int t = 0; t < T; ++t)((sc_v *)acc)[t] = a[t];                        \
    }

typedef void (*sc_tile_fn)(const float *, const int32_t *, const float *, int64_t, int64_t, float *);

SC_DEF_TILE(1)
SC_DEF_TILE(2)
SC_DEF_TILE(3)
#if SC_TMAX >= 6
SC_DEF_TILE(4)
SC_DEF_TILE(5)
SC_DEF_TILE(6)
#endif
#if SC_TMAX >= 28
SC_DEF_TILE(7)
SC_DEF_TILE(8)
SC_DEF_TILE(9)
SC_DEF_TILE(10)
SC_DEF_TILE(11)
SC_DEF_TILE(12)
SC_DEF_TILE(13)
SC_DEF_TILE(14)
SC_DEF_TILE(15)
SC_DEF_TILE(16)
SC_DEF_TILE(17)
SC_DEF_TILE(18)
SC_DEF_TILE(19)
SC_DEF_TILE(20)
SC_DEF_TILE(21)
SC_DEF_TILE(22)
SC_DEF_TILE(23)
SC_DEF_TILE(24)
SC_DEF_TILE(25)
SC_DEF_TILE(26)
SC_DEF_TILE(27)
SC_DEF_TILE(28)
#endif

static const sc_tile_fn sc_tiles[SC_TMAX + 1] = {
    0, sc_tile_1, sc_tile_2, sc_tile_3,
#if SC_TMAX >= 6
    sc_tile_4, sc_tile_5, sc_tile_6,
#endif
#if SC_TMAX >= 28
    sc_tile_7, sc_tile_8, sc_tile_9, sc_tile_10, sc_tile_11, sc_tile_12, sc_tile_13,
    sc_tile_14, sc_tile_15, sc_tile_16, sc_tile_17, sc_tile_18, sc_tile_19, sc_tile_20,
    sc_tile_21, sc_tile_22, sc_tile_23, sc_tile_24, sc_tile_25, sc_tile_26, sc_tile_27,
    sc_tile_28,
#endif
};

static int sc_max_tile(void) { return SC_TMAX; }

static int64_t sc_num_vectors(int OH, int OW, int Wq) {
    int64_t L = (int64_t)(OH - 1) * Wq + OW;
    return (L + SC_VL - 1) / SC_VL;
}

/* Fill the prepared buffers of N images (see the header comment); the tail of each image's
 * buffer, from C*S*Hq*Wq to img_stride, is zeroed. */
static void sc_prepare(const float *x, int N, int C, int H, int W, int ph, int pw, int sh, int sw,
                       int Hq, int Wq, int64_t img_stride, float *buf, int nthreads) {
    const int S = sh * sw;
    const int64_t plane = (int64_t)Hq * Wq;
    const int64_t used = (int64_t)C * S * plane;
    const int64_t jobs = (int64_t)N * C;
    int64_t job;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (job = 0; job < jobs; ++job) {
        const int64_t n = job / C, c = job % C;
        const float *src = x + (n * C + c) * (int64_t)H * W;
        for (int rh = 0; rh < sh; ++rh) {
            for (int rw = 0; rw < sw; ++rw) {
                float *dst = buf + n * img_stride + (c * S + rh * sw + rw) * plane;
                /* columns j with 0 <= j*sw + rw - pw < W */
                int j0 = pw - rw > 0 ? (pw - rw + sw - 1) / sw : 0;
                int j1 = W + pw - rw > 0 ? (W + pw - rw + sw - 1) / sw : 0;
                if (j1 > Wq) j1 = Wq;
                if (j0 > j1) j0 = j1;
                for (int i = 0; i < Hq; ++i) {
                    float *d = dst + (int64_t)i * Wq;
                    const int r = i * sh + rh - ph;
                    if (r < 0 || r >= H || j0 == j1) {
                        memset(d, 0, sizeof(float) * Wq);
                        continue;
                    }
                    const float *s = src + (int64_t)r * W + (int64_t)j0 * sw + rw - pw;
                    if (j0 > 0) memset(d, 0, sizeof(float) * j0);
                    if (sw == 1) {
                        memcpy(d + j0, s, sizeof(float) * (j1 - j0));
                    } else {
                        for (int j = j0; j < j1; ++j) d[j] = s[(int64_t)(j - j0) * sw];
                    }
                    if (j1 < Wq) memset(d + j1, 0, sizeof(float) * (Wq - j1));
                }
            }
        }
        if (c == C - 1 && img_stride > used)
            memset(buf + n * img_stride + used, 0, sizeof(float) * (img_stride - used));
    }
}

/* The convolution proper. blk has (G*OCg) rows of NB+1 pointers into col/val: row r's nonzeros
 * of input-channel block b are [blk[r*(NB+1)+b], blk[r*(NB+1)+b+1]). Returns 0, or -1 when a
 * thread's scratch could not be allocated. */
static int sc_conv(const float *buf, int64_t img_stride, int64_t grp_stride, int N, int G, int OCg,
                   int NB, const int32_t *blk, const int32_t *col, const float *val,
                   const float *bias, int OH, int OW, int Wq, int tile, int OCB, int relu,
                   float *out, int nthreads) {
    const int64_t L = (int64_t)(OH - 1) * Wq + OW;
    const int64_t NV = sc_num_vectors(OH, OW, Wq);
    if (tile < 1) tile = 1;
    if (tile > SC_TMAX) tile = SC_TMAX;
    const int64_t ntile = (NV + tile - 1) / tile;
    const int T = (int)((NV + ntile - 1) / ntile); /* balanced tiles of <= tile vectors */
    if (OCB < 1) OCB = 1;
    if (OCB > OCg) OCB = OCg;
    const int nocb = (OCg + OCB - 1) / OCB;
    const int64_t items = (int64_t)N * G * nocb * ntile;
    const int64_t plane = (int64_t)OH * OW;
    const int64_t sstride = (int64_t)T * SC_VL;
    int failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        float *scr = (float *)aligned_alloc(64, sizeof(float) * sstride * OCB);
        if (!scr) {
#pragma omp atomic write
            failed = 1;
        }
        int64_t it;
#pragma omp for schedule(dynamic, 1)
        for (it = 0; it < items; ++it) {
            if (!scr) continue;
            const int64_t tl = it % ntile;
            int64_t r = it / ntile;
            const int ocb = (int)(r % nocb);
            r /= nocb;
            const int g = (int)(r % G);
            const int64_t n = r / G;
            const int64_t v0 = tl * T;
            const int tv = (int)(NV - v0 < T ? NV - v0 : T);
            const int64_t p0 = v0 * SC_VL;
            const int64_t p1 = p0 + (int64_t)tv * SC_VL < L ? p0 + (int64_t)tv * SC_VL : L;
            const float *in = buf + n * img_stride + g * grp_stride + p0;
            const int oc0 = ocb * OCB;
            const int oc1 = oc0 + OCB < OCg ? oc0 + OCB : OCg;
            const sc_tile_fn fn = sc_tiles[tv];
            for (int oc = oc0; oc < oc1; ++oc) {
                const float b0 = bias ? bias[g * OCg + oc] : 0.0f;
                float *s = scr + (oc - oc0) * sstride;
                for (int64_t q = 0; q < (int64_t)tv * SC_VL; ++q) s[q] = b0;
            }
            for (int b = 0; b < NB; ++b) {
                for (int oc = oc0; oc < oc1; ++oc) {
                    const int32_t *bp = blk + ((int64_t)g * OCg + oc) * (NB + 1) + b;
                    if (bp[1] > bp[0]) fn(in, col, val, bp[0], bp[1], scr + (oc - oc0) * sstride);
                }
            }
            const int64_t y0 = p0 / Wq, y1 = (p1 - 1) / Wq;
            for (int oc = oc0; oc < oc1; ++oc) {
                const float *s = scr + (oc - oc0) * sstride;
                float *o = out + (n * G * OCg + (int64_t)g * OCg + oc) * plane;
                for (int64_t y = y0; y <= y1; ++y) {
                    const int64_t rs = y * Wq;
                    const int64_t xa = p0 > rs ? p0 - rs : 0;
                    const int64_t xb = p1 - rs < OW ? p1 - rs : OW;
                    const float *sr = s + rs - p0;
                    float *orow = o + y * OW;
                    if (relu) {
                        for (int64_t xx = xa; xx < xb; ++xx) orow[xx] = sr[xx] < 0.0f ? 0.0f : sr[xx];
                    } else {
                        for (int64_t xx = xa; xx < xb; ++xx) orow[xx] = sr[xx];
                    }
                }
            }
        }
        free(scr);
    }
    return failed ? -1 : 0;
}

/* ---- sparse x dense fully-connected ----------------------------------------------------------
 * Y (M x N) = X (M x K) . W^T + bias, W as CSR (N rows, K columns). Batch 1: one dot product per
 * row (SpMV). Batch > 1: X is transposed once to XT (K x Mp, Mp = M rounded up to SC_VL) so that
 * each nonzero W[n, k] is a contiguous multiply-add of XT row k into the register accumulators of
 * output n (up to SC_FMT vectors of batch columns at a time). */

#define SC_DEF_FTILE(T)                                                                      \
    static void sc_ftile_##T(const float *__restrict xt, int64_t Mp, const int32_t *__restrict col, \
                             const float *__restrict val, int64_t j0, int64_t j1, float b0,  \
                             float *__restrict acc) {                                        \
        sc_v a[T];                                                                           \
        SC_UNROLL for (int t = 0; t < T; ++t) a[t] = (sc_v){0} + b0;                         \
        for (int64_t j = j0; j < j1; ++j) {                                                  \
            const float *p = xt + (int64_t)col[j] * Mp;                                      \
            const sc_v w = val[j] - (sc_v){0};                                               \
            SC_UNROLL for (int t = 0; t < T; ++t) a[t] += w * *(const sc_v *)(p + SC_VL * t); \
        }                                                                                    \
        SC_UNROLL for (int t = 0; t < T; ++t)((sc_v *)acc)[t] = a[t];                        \
    }

typedef void (*sc_ftile_fn)(const float *, int64_t, const int32_t *, const float *, int64_t,
                            int64_t, float, float *);

SC_DEF_FTILE(1)
SC_DEF_FTILE(2)
#if SC_FMT >= 3
SC_DEF_FTILE(3)
#endif
#if SC_FMT >= 8
SC_DEF_FTILE(4)
SC_DEF_FTILE(5)
SC_DEF_FTILE(6)
SC_DEF_FTILE(7)
SC_DEF_FTILE(8)
#endif

static const sc_ftile_fn sc_ftiles[SC_FMT + 1] = {
    0, sc_ftile_1, sc_ftile_2,
#if SC_FMT >= 3
    sc_ftile_3,
#endif
#if SC_FMT >= 8
    sc_ftile_4, sc_ftile_5, sc_ftile_6, sc_ftile_7, sc_ftile_8,
#endif
};

static int sc_fc(const float *x, int M, int K, int N, const int32_t *rowptr, const int32_t *col,
                 const float *val, const float *bias, int relu, float *y, int nthreads) {
    int64_t n;
    if (M == 1) {
#pragma omp parallel for schedule(dynamic, 64) num_threads(nthreads)
        for (n = 0; n < N; ++n) {
            float s = 0.0f;
            const int32_t j1 = rowptr[n + 1];
#pragma omp simd reduction(+ : s)
            for (int32_t j = rowptr[n]; j < j1; ++j) s += val[j] * x[col[j]];
            s += bias ? bias[n] : 0.0f;
            y[n] = relu && s < 0.0f ? 0.0f : s;
        }
        return 0;
    }
    const int64_t Mp = ((int64_t)M + SC_VL - 1) / SC_VL * SC_VL;
    float *xt = (float *)aligned_alloc(64, sizeof(float) * Mp * (K > 0 ? K : 1));
    if (!xt) return -1;
    int64_t k;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (k = 0; k < K; ++k) {
        float *d = xt + k * Mp;
        for (int64_t m = 0; m < M; ++m) d[m] = x[m * K + k];
        for (int64_t m = M; m < Mp; ++m) d[m] = 0.0f;
    }
    const int64_t nvec = Mp / SC_VL;
    int failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        float *acc = (float *)aligned_alloc(64, sizeof(float) * SC_VL * SC_FMT);
        if (!acc) {
#pragma omp atomic write
            failed = 1;
        }
        int64_t nn;
#pragma omp for schedule(dynamic, 16)
        for (nn = 0; nn < N; ++nn) {
            if (!acc) continue;
            const float b0 = bias ? bias[nn] : 0.0f;
            for (int64_t v0 = 0; v0 < nvec; v0 += SC_FMT) {
                const int tv = (int)(nvec - v0 < SC_FMT ? nvec - v0 : SC_FMT);
                sc_ftiles[tv](xt + v0 * SC_VL, Mp, col, val, rowptr[nn], rowptr[nn + 1], b0, acc);
                const int64_t m1 = (v0 + tv) * SC_VL < M ? (v0 + tv) * SC_VL : M;
                for (int64_t m = v0 * SC_VL; m < m1; ++m) {
                    const float s = acc[m - v0 * SC_VL];
                    y[m * N + nn] = relu && s < 0.0f ? 0.0f : s;
                }
            }
        }
        free(acc);
    }
    free(xt);
    return failed ? -1 : 0;
}

#endif /* PYSKIM_SCONV_IMPL_H */
