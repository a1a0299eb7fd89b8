/* Dense single-precision matrix products for pyskim's convolution and inner-product layers, run on
 * pyskim's thread pool (pool_api.h). No BLAS library is called.
 *
 *   C_g (M x N) = [beta ? C_g : 0] + bias + A_g (M x K) . B_g (K x N)      for every group g < G
 *
 * A and B are read through operand views (gm_operand_t): a strided, column-blocked dense view
 * (covers row-major, transposed and Caffe's (image, channel, position) blob layouts) or, for B, an
 * implicit im2col of a batch of images (im2col is fused into the packing: no column matrix is ever
 * written). The product is BLIS-style: A is packed once into MR-row panels, each task packs a
 * KC x (its columns) block of B into NR-column panels and runs an MR x NR register kernel over
 * them. K is summed in blocks (at most kc_max long, none crossing a segment of kseg: the weight
 * gradient sums image by image, as Caffe), each block k by k in registers (in runs of at most ksub,
 * whose sums are added up: short runs keep the weight gradient's long, cancelling sums accurate),
 * then added to C in order. Every element of C is the
 * same sum in the same order whatever the thread count or the cut into tasks, so results do not
 * depend on the number of threads. */
#ifndef PYSKIM_GEMM_IMPL_H
#define PYSKIM_GEMM_IMPL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "pool_api.h"

#if defined(__AVX512F__)
#define GM_MR 12
#define GM_NR 32
typedef float gm_v __attribute__((vector_size(64), aligned(64)));
#else
#define GM_MR 6
#define GM_NR 16
typedef float gm_v __attribute__((vector_size(32), aligned(32)));
#endif
#define GM_VL ((int)(sizeof(gm_v) / sizeof(float)))
#define GM_NV (GM_NR / GM_VL)
#define GM_KC 384
#define GM_NC_PANELS 24
#define GM_MAX_KW 16     /* widest kernel of the row-run im2col packing */

enum { GM_DENSE = 0, GM_IM2COL = 1, GM_IM2COL_T = 2 };

/* One operand. GM_DENSE: element (r, c) of group g at
 *     base + g*gstride + r*rs + (c / cblk)*cbs + (c % cblk)*cs.
 * GM_IM2COL: element (tap, position) of Caffe's column matrix of images (N, G*C, H, W), group g's
 * channels; tap = (ch*kh + i)*kw + j, position = (n*OH + oh)*OW + ow. GM_IM2COL_T: its transpose,
 * element (position, tap). */
typedef struct {
    int kind;
    const float *base;
    int64_t gstride, rs, cs, cblk, cbs;
    int C, H, W, kh, kw, ph, pw, sh, sw, dh, dw, OH, OW;
    int64_t img_stride;
} gm_operand_t;

typedef struct {
    int64_t M, N, K;
    int G;
    gm_operand_t a, b;
    float *c;                    /* element (r, c) of group g at c + g*c_gstride + r*c_rs + blocked(c) */
    int64_t c_gstride, c_rs, c_cblk, c_cbs;
    const float *bias;           /* NULL, or per row (bias + g*M + r), or per column (bias_cols) */
    int bias_cols, beta;
    int64_t kseg;                /* K runs in segments of kseg (0: one segment), each in K blocks */
    int64_t kc_max;              /* the longest K block (0: GM_KC) */
    int64_t ksub;                /* the longest sum in registers inside a block (0: the block) */
    const float *apacked;        /* A already packed by gm_pack_a_all, or NULL */
    /* the plan */
    int64_t kc, mpanels, npanels, mcp, ncp, mchunks, nchunks;
    float *apack;
    int failed;
} gm_job_t;

/* ---- per-thread buffers ---------------------------------------------------------------------- */

static __thread float *gm_tls_buf[2];
static __thread int64_t gm_tls_cap[2];

/* A 64-byte aligned buffer of n floats owned by the calling thread (slot 0: packed B, 1: packed
 * A), kept for its next call; NULL when it cannot be allocated. */
static float *gm_thread_buffer(int slot, int64_t n) {
    if (n > gm_tls_cap[slot]) {
        free(gm_tls_buf[slot]);
        const int64_t cap = (n + 15) / 16 * 16;
        gm_tls_buf[slot] = (float *)aligned_alloc(64, sizeof(float) * cap);
        gm_tls_cap[slot] = gm_tls_buf[slot] ? cap : 0;
    }
    return gm_tls_buf[slot];
}

/* ---- the register kernel: tile (MR x NR, row-major) = a-panel (kb x MR) . b-panel (kb x NR) ---- */

/* GM_KERNEL(name, NV): tile columns [0, NV*VL) of (MR x NR, row-major) = a-panel (kb x MR) .
 * b-panel (kb x NR), summed in registers over runs of ksub k, the runs' sums added in the tile.
 * The full kernel has NV = NR / VL; the half one serves a last panel of at most NR / 2 columns. */
#define GM_KERNEL(name, NV)                                                                         \
    static inline void name(int64_t kb, int64_t ksub, const float *__restrict a, const float *__restrict b, \
                            float *__restrict tile) {                                               \
        for (int64_t k0 = 0; k0 < kb; k0 += ksub) {                                                 \
            const int64_t k1 = k0 + ksub < kb ? k0 + ksub : kb;                                     \
            gm_v acc[GM_MR][NV];                                                                    \
            _Pragma("GCC unroll 16") for (int r = 0; r < GM_MR; ++r)                                \
                _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) acc[r][v] = (gm_v){0};         \
            for (int64_t k = k0; k < k1; ++k) {                                                     \
                gm_v bv[NV];                                                                        \
                _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) bv[v] = *(const gm_v *)(b + v * GM_VL); \
                _Pragma("GCC unroll 16") for (int r = 0; r < GM_MR; ++r) {                          \
                    const gm_v av = GM_BROADCAST(a[r]);                                             \
                    _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];   \
                }                                                                                   \
                a += GM_MR;                                                                         \
                b += GM_NR;                                                                         \
            }                                                                                       \
            _Pragma("GCC unroll 16") for (int r = 0; r < GM_MR; ++r)                                \
                _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) {                              \
                    gm_v *t = (gm_v *)(tile + r * GM_NR + v * GM_VL);                               \
                    *t = k0 ? *t + acc[r][v] : acc[r][v];                                           \
                }                                                                                   \
        }                                                                                           \
    }

#if defined(__AVX512F__)
#define GM_BROADCAST(x) ((gm_v)_mm512_set1_ps(x))
#else
#define GM_BROADCAST(x) ((x) - (gm_v){0})
#endif

GM_KERNEL(gm_kernel, GM_NV)
GM_KERNEL(gm_kernel_half, GM_NV / 2)

/* ---- packing ---------------------------------------------------------------------------------- */

static inline const float *gm_dense_at(const gm_operand_t *o, int g, int64_t r, int64_t c) {
    return o->base + g * o->gstride + r * o->rs + (c / o->cblk) * o->cbs + (c % o->cblk) * o->cs;
}

/* A's rows [i0, i0 + MR) of group g, all K columns, into dst (K x MR; rows past M are zero). */
static void gm_pack_a(const gm_job_t *jb, int g, int64_t i0, float *__restrict dst) {
    const gm_operand_t *o = &jb->a;
    const int64_t K = jb->K;
    const int mr = (int)(jb->M - i0 < GM_MR ? jb->M - i0 : GM_MR);
    int64_t k = 0;
    while (k < K) {   /* one column block at a time: within it, columns are cs apart */
        const int64_t off = k % o->cblk;
        const int64_t len = (o->cblk - off < K - k) ? o->cblk - off : K - k;
        const float *rows[GM_MR];
        for (int r = 0; r < mr; ++r) rows[r] = gm_dense_at(o, g, i0 + r, k);
        const int64_t cs = o->cs;
        float *d = dst + k * GM_MR;
        for (int64_t t = 0; t < len; ++t, d += GM_MR) {
            int r = 0;
            for (; r < mr; ++r) d[r] = rows[r][t * cs];
            for (; r < GM_MR; ++r) d[r] = 0.0f;
        }
        k += len;
    }
}

/* B's rows [p0, p0 + kb), columns [j0, j0 + nr) (nr <= NR) of group g into dst (kb x NR; columns
 * past nr are zero), for a dense view. */
static void gm_pack_b_dense(const gm_operand_t *o, int g, int64_t p0, int64_t kb, int64_t j0, int nr,
                            float *__restrict dst) {
    const int64_t off = j0 % o->cblk;
    if (o->cs == 1 && off + nr <= o->cblk) {   /* contiguous rows */
        const float *src = gm_dense_at(o, g, p0, j0);
        for (int64_t k = 0; k < kb; ++k, src += o->rs, dst += GM_NR) {
            int t = 0;
            for (; t < nr; ++t) dst[t] = src[t];
            for (; t < GM_NR; ++t) dst[t] = 0.0f;
        }
        return;
    }
#if defined(__AVX512F__)
    if (off + nr <= o->cblk && o->cs > 0 && o->cs * (GM_NR - 1) < 0x7fffffffLL) {
        /* columns cs apart (a transposed operand): one gather per 16 columns and row */
        const float *src = gm_dense_at(o, g, p0, j0);
        const __m512i step = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2,
                                                                 1, 0), _mm512_set1_epi32((int)o->cs));
        const __m512i step_hi = _mm512_add_epi32(step, _mm512_set1_epi32((int)(16 * o->cs)));
        const __mmask16 m_lo = (__mmask16)(nr >= 16 ? 0xffff : (1u << nr) - 1);
        const __mmask16 m_hi = (__mmask16)(nr >= 32 ? 0xffff : nr > 16 ? (1u << (nr - 16)) - 1 : 0);
        for (int64_t k = 0; k < kb; ++k, src += o->rs, dst += GM_NR) {
            _mm512_store_ps(dst, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m_lo, step, src, 4));
            _mm512_store_ps(dst + 16, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m_hi, step_hi, src, 4));
        }
        return;
    }
#endif
    int64_t cof[GM_NR];
    for (int t = 0; t < nr; ++t) cof[t] = ((j0 + t) / o->cblk) * o->cbs + ((j0 + t) % o->cblk) * o->cs;
    const float *src = o->base + g * o->gstride + p0 * o->rs;
    for (int64_t k = 0; k < kb; ++k, src += o->rs, dst += GM_NR) {
        int t = 0;
        for (; t < nr; ++t) dst[t] = src[cof[t]];
        for (; t < GM_NR; ++t) dst[t] = 0.0f;
    }
}

/* Walks output positions n = (b*OH + oh)*OW + ow in order: the image-relative start
 * (b*img_stride + ih0*W + iw0) and window corner (ih0, iw0) of each, without a division per step. */
typedef struct {
    int64_t b;
    int oh, ow, ih0, iw0;
    int64_t start;
} gm_pos_t;

static inline void gm_pos_set(const gm_operand_t *o, gm_pos_t *q) {
    q->ih0 = q->oh * o->sh - o->ph;
    q->iw0 = q->ow * o->sw - o->pw;
    q->start = q->b * o->img_stride + (int64_t)q->ih0 * o->W + q->iw0;
}

static inline void gm_pos_init(const gm_operand_t *o, int64_t n, gm_pos_t *q) {
    const int64_t P = (int64_t)o->OH * o->OW;
    q->b = n / P;
    q->oh = (int)(n % P / o->OW);
    q->ow = (int)(n % o->OW);
    gm_pos_set(o, q);
}

static inline void gm_pos_next(const gm_operand_t *o, gm_pos_t *q) {
    if (++q->ow == o->OW) {
        q->ow = 0;
        if (++q->oh == o->OH) {
            q->oh = 0;
            ++q->b;
        }
    }
    gm_pos_set(o, q);
}

/* Walks kernel taps k = (ch*kh + i)*kw + j in order: the channel-relative offset (ch*H*W +
 * i*dh*W + j*dw) and window offsets (i*dh, j*dw) of each. */
typedef struct {
    int ch, i, j, di, dj;
    int64_t off;
} gm_tap_t;

static inline void gm_tap_set(const gm_operand_t *o, gm_tap_t *q) {
    q->di = q->i * o->dh;
    q->dj = q->j * o->dw;
    q->off = (int64_t)q->ch * o->H * o->W + (int64_t)q->di * o->W + q->dj;
}

static inline void gm_tap_init(const gm_operand_t *o, int64_t k, gm_tap_t *q) {
    q->ch = (int)(k / (o->kh * o->kw));
    q->i = (int)(k / o->kw % o->kh);
    q->j = (int)(k % o->kw);
    gm_tap_set(o, q);
}

static inline void gm_tap_next(const gm_operand_t *o, gm_tap_t *q) {
    if (++q->j == o->kw) {
        q->j = 0;
        if (++q->i == o->kh) {
            q->i = 0;
            ++q->ch;
        }
    }
    gm_tap_set(o, q);
}

#if defined(__AVX512F__)
/* im2col with unit horizontal stride and dilation: the panel's positions fall into runs along
 * output rows, and each run reads one contiguous input row per tap, so every tap is a few masked
 * loads (lanes outside the image are zero) instead of gathers. */
static void gm_pack_b_im2col_rows(const gm_operand_t *o, const float *base, const int64_t *start,
                                  const int *ih0, const int *iw0, int64_t p0, int64_t kb, int nr,
                                  float *__restrict dst) {
    int lane_lo[GM_NR], lane_hi[GM_NR], run_ih[GM_NR], run_iw[GM_NR], nruns = 0;
    int64_t run_at[GM_NR];
    for (int t = 0; t < nr;) {
        int e = t + 1;
        while (e < nr && ih0[e] == ih0[t] && start[e] == start[t] + (e - t)) ++e;
        lane_lo[nruns] = t;
        lane_hi[nruns] = e;
        run_ih[nruns] = ih0[t];
        run_iw[nruns] = iw0[t] - t;               /* input column of lane 0 (for dj = 0) */
        run_at[nruns++] = start[t] - t;           /* input offset of lane 0 */
        t = e;
    }
    const int H = o->H, W = o->W;
    /* lane masks per run and horizontal tap: lanes L of the run with 0 <= run_iw + j + L < W */
    uint32_t masks[GM_NR][GM_MAX_KW];
    for (int r = 0; r < nruns; ++r)
        for (int j = 0; j < o->kw; ++j) {
            int a = lane_lo[r], b = lane_hi[r];
            const int first = -(run_iw[r] + j), last = W - (run_iw[r] + j);
            if (a < first) a = first;
            if (b > last) b = last;
            masks[r][j] = a < b ? (uint32_t)(((uint64_t)1 << b) - ((uint64_t)1 << a)) : 0;
        }
    gm_tap_t tap;
    gm_tap_init(o, p0, &tap);
    for (int64_t k = 0; k < kb; ++k, dst += GM_NR, gm_tap_next(o, &tap)) {
        const float *src = base + tap.off;
        __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
        for (int r = 0; r < nruns; ++r) {
            /* a row outside the image loads nothing (mask 0) */
            const uint32_t m = (unsigned)(run_ih[r] + tap.di) < (unsigned)H ? masks[r][tap.j] : 0;
            lo = _mm512_mask_loadu_ps(lo, (__mmask16)m, src + run_at[r]);
            hi = _mm512_mask_loadu_ps(hi, (__mmask16)(m >> 16), src + run_at[r] + 16);
        }
        _mm512_store_ps(dst, lo);
        _mm512_store_ps(dst + 16, hi);
    }
}
#endif

/* im2col: taps [p0, p0 + kb) x positions [j0, j0 + nr) of group g. */
static void gm_pack_b_im2col(const gm_operand_t *o, int g, int64_t p0, int64_t kb, int64_t j0, int nr,
                             float *__restrict dst) {
    const float *base = o->base + g * o->gstride;
    int64_t start[GM_NR];
    int ih0[GM_NR], iw0[GM_NR];
    gm_pos_t pos;
    gm_pos_init(o, j0, &pos);
    for (int t = 0; t < nr; ++t, gm_pos_next(o, &pos)) {
        start[t] = pos.start;
        ih0[t] = pos.ih0;
        iw0[t] = pos.iw0;
    }
    const int H = o->H, W = o->W;
#if defined(__AVX512F__)
    if (o->sw == 1 && o->dw == 1 && o->kw <= GM_MAX_KW) {
        gm_pack_b_im2col_rows(o, base, start, ih0, iw0, p0, kb, nr, dst);
        return;
    }
    /* gathers with 32-bit offsets from the panel's first position */
    int fits = start[nr - 1] - start[0] + (int64_t)o->C * H * W < 0x7fffffffLL;
    if (fits) {
        const float *pbase = base + start[0];
        int32_t rel[GM_NR] __attribute__((aligned(64))), vih[GM_NR] __attribute__((aligned(64))),
            viw[GM_NR] __attribute__((aligned(64)));
        for (int t = 0; t < GM_NR; ++t) {
            rel[t] = t < nr ? (int32_t)(start[t] - start[0]) : 0;
            vih[t] = t < nr ? ih0[t] : -0x40000000;
            viw[t] = t < nr ? iw0[t] : -0x40000000;
        }
        const __m512i hmax = _mm512_set1_epi32(H), wmax = _mm512_set1_epi32(W);
        gm_tap_t tap;
        gm_tap_init(o, p0, &tap);
        for (int64_t k = 0; k < kb; ++k, dst += GM_NR, gm_tap_next(o, &tap)) {
            const int64_t off = tap.off;
            const int di = tap.di, dj = tap.dj;
            const __m512i voff = _mm512_set1_epi32((int32_t)off);
            const __m512i vdi = _mm512_set1_epi32(di), vdj = _mm512_set1_epi32(dj);
            for (int v = 0; v < GM_NV; ++v) {
                const __m512i ih = _mm512_add_epi32(_mm512_load_si512(vih + 16 * v), vdi);
                const __m512i iw = _mm512_add_epi32(_mm512_load_si512(viw + 16 * v), vdj);
                const __mmask16 m = _mm512_cmplt_epu32_mask(ih, hmax) & _mm512_cmplt_epu32_mask(iw, wmax);
                const __m512i idx = _mm512_add_epi32(_mm512_load_si512(rel + 16 * v), voff);
                _mm512_store_ps(dst + 16 * v,
                                _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, pbase, 4));
            }
        }
        return;
    }
#endif
    gm_tap_t tap;
    gm_tap_init(o, p0, &tap);
    for (int64_t k = 0; k < kb; ++k, dst += GM_NR, gm_tap_next(o, &tap)) {
        const int64_t off = tap.off;
        const int di = tap.di, dj = tap.dj;
        int t = 0;
        for (; t < nr; ++t) {
            const int ih = ih0[t] + di, iw = iw0[t] + dj;
            dst[t] = ((unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W) ? base[start[t] + off] : 0.0f;
        }
        for (; t < GM_NR; ++t) dst[t] = 0.0f;
    }
}

/* im2col transposed: positions [p0, p0 + kb) x taps [j0, j0 + nr) of group g. */
static void gm_pack_b_im2col_t(const gm_operand_t *o, int g, int64_t p0, int64_t kb, int64_t j0, int nr,
                               float *__restrict dst) {
    const float *base = o->base + g * o->gstride;
    int64_t toff[GM_NR];
    int di[GM_NR], dj[GM_NR];
    gm_tap_t tap;
    gm_tap_init(o, j0, &tap);
    for (int t = 0; t < nr; ++t, gm_tap_next(o, &tap)) {
        toff[t] = tap.off;
        di[t] = tap.di;
        dj[t] = tap.dj;
    }
    const int H = o->H, W = o->W;
#if defined(__AVX512F__)
    if (toff[nr - 1] < 0x7fffffffLL) {
        int32_t vt[GM_NR] __attribute__((aligned(64))), vdi[GM_NR] __attribute__((aligned(64))),
            vdj[GM_NR] __attribute__((aligned(64)));
        for (int t = 0; t < GM_NR; ++t) {
            vt[t] = t < nr ? (int32_t)toff[t] : 0;
            vdi[t] = t < nr ? di[t] : 0x40000000;
            vdj[t] = t < nr ? dj[t] : 0x40000000;
        }
        const __m512i hmax = _mm512_set1_epi32(H), wmax = _mm512_set1_epi32(W);
        gm_pos_t pos;
        gm_pos_init(o, p0, &pos);
        for (int64_t k = 0; k < kb; ++k, dst += GM_NR, gm_pos_next(o, &pos)) {
            const int64_t start = pos.start;
            const int ih0 = pos.ih0, iw0 = pos.iw0;
            const __m512i vih0 = _mm512_set1_epi32(ih0), viw0 = _mm512_set1_epi32(iw0);
            const float *pb = base + start;
            for (int v = 0; v < GM_NV; ++v) {
                const __m512i ih = _mm512_add_epi32(_mm512_load_si512(vdi + 16 * v), vih0);
                const __m512i iw = _mm512_add_epi32(_mm512_load_si512(vdj + 16 * v), viw0);
                const __mmask16 m = _mm512_cmplt_epu32_mask(ih, hmax) & _mm512_cmplt_epu32_mask(iw, wmax);
                _mm512_store_ps(dst + 16 * v, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m,
                                                                       _mm512_load_si512(vt + 16 * v), pb, 4));
            }
        }
        return;
    }
#endif
    gm_pos_t pos;
    gm_pos_init(o, p0, &pos);
    for (int64_t k = 0; k < kb; ++k, dst += GM_NR, gm_pos_next(o, &pos)) {
        const int64_t start = pos.start;
        const int ih0 = pos.ih0, iw0 = pos.iw0;
        int t = 0;
        for (; t < nr; ++t) {
            const int ih = ih0 + di[t], iw = iw0 + dj[t];
            dst[t] = ((unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W) ? base[start + toff[t]] : 0.0f;
        }
        for (; t < GM_NR; ++t) dst[t] = 0.0f;
    }
}

static void gm_pack_b(const gm_operand_t *o, int g, int64_t p0, int64_t kb, int64_t j0, int nr, float *dst) {
    if (o->kind == GM_IM2COL)
        gm_pack_b_im2col(o, g, p0, kb, j0, nr, dst);
    else if (o->kind == GM_IM2COL_T)
        gm_pack_b_im2col_t(o, g, p0, kb, j0, nr, dst);
    else
        gm_pack_b_dense(o, g, p0, kb, j0, nr, dst);
}

/* ---- storing a tile --------------------------------------------------------------------------- */

/* A panel's columns [j0, j0 + nr) of C as runs inside C's column blocks: run s covers tile
 * columns [t[s], t[s + 1]) at offset at[s] - t[s] from a row's start. */
typedef struct {
    int n, t[GM_NR + 1];
    int64_t at[GM_NR + 1];
} gm_runs_t;

static void gm_column_runs(const gm_job_t *jb, int64_t j0, int nr, gm_runs_t *runs) {
    runs->n = 0;
    for (int t = 0; t < nr;) {
        const int64_t col = j0 + t, off = col % jb->c_cblk;
        const int len = (int)(jb->c_cblk - off < nr - t ? jb->c_cblk - off : nr - t);
        runs->at[runs->n] = (col / jb->c_cblk) * jb->c_cbs + off - t;
        runs->t[runs->n++] = t;
        t += len;
    }
    runs->t[runs->n] = nr;
}

/* d[t0, t1) = [d +] src + b (b: one value, or bcol[t] per column when bcol is given). */
static inline void gm_store_run(float *__restrict d, const float *__restrict src, const float *bcol, float b,
                                int t0, int t1, int set) {
#if defined(__AVX512F__)
    const __m512 vb = _mm512_set1_ps(b);
    for (int t = t0; t < t1; t += 16) {
        const __mmask16 m = (__mmask16)(t1 - t >= 16 ? 0xffff : (1u << (t1 - t)) - 1);
        __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, src + t),
                                 bcol ? _mm512_maskz_loadu_ps(m, bcol + t) : vb);
        if (!set) v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, d + t), v);
        _mm512_mask_storeu_ps(d + t, m, v);
    }
#else
    for (int t = t0; t < t1; ++t) {
        const float v = src[t] + (bcol ? bcol[t] : b);
        d[t] = set ? v : d[t] + v;
    }
#endif
}

/* Rows [i0, i0 + mr) x the panel's columns of C (group g) from tile: the first K block sets them
 * (beta: adds to them) with the bias, later blocks add. */
static void gm_store(const gm_job_t *jb, int g, int64_t i0, int mr, int64_t j0, const gm_runs_t *runs,
                     const float *__restrict tile, int first) {
    const int set = first && !jb->beta;
    const float *bcol = first && jb->bias && jb->bias_cols ? jb->bias + j0 : 0;
    for (int r = 0; r < mr; ++r) {
        float *row = jb->c + g * jb->c_gstride + (i0 + r) * jb->c_rs;
        const float rb = (first && jb->bias && !jb->bias_cols) ? jb->bias[g * jb->M + i0 + r] : 0.0f;
        for (int s = 0; s < runs->n; ++s)
            gm_store_run(row + runs->at[s], tile + r * GM_NR, bcol, rb, runs->t[s], runs->t[s + 1], set);
    }
}

/* ---- the product ------------------------------------------------------------------------------ */

/* The K block for a segment of K: K itself up to 1.25 kc_max, else equal blocks of at most kc_max. */
static inline int64_t gm_kc(int64_t K, int64_t kc_max) {
    if (K <= 0) return 1;
    if (K <= kc_max + kc_max / 4) return K;
    const int64_t n = (K + kc_max - 1) / kc_max;
    return (K + n - 1) / n;
}

static void gm_pack_a_task(void *ctx, int64_t task, int worker) {
    (void)worker;
    const gm_job_t *jb = (const gm_job_t *)ctx;
    const int g = (int)(task / jb->mpanels);
    const int64_t ip = task % jb->mpanels;
    gm_pack_a(jb, g, ip * GM_MR, jb->apack + (g * jb->mpanels + ip) * jb->K * GM_MR);
}

static void gm_product_task(void *ctx, int64_t task, int worker) {
    (void)worker;
    gm_job_t *jb = (gm_job_t *)ctx;
    const int64_t nc = task % jb->nchunks, mc = task / jb->nchunks % jb->mchunks;
    const int g = (int)(task / (jb->nchunks * jb->mchunks));
    const int64_t jp0 = nc * jb->ncp, jp1 = jp0 + jb->ncp < jb->npanels ? jp0 + jb->ncp : jb->npanels;
    const int64_t ip0 = mc * jb->mcp, ip1 = ip0 + jb->mcp < jb->mpanels ? ip0 + jb->mcp : jb->mpanels;
    float *bbuf = gm_thread_buffer(0, jb->kc * jb->ncp * GM_NR);
    if (!bbuf) {
        jb->failed = 1;
        return;
    }
    float tile[GM_MR * GM_NR] __attribute__((aligned(64)));
    gm_runs_t runs[GM_NC_PANELS];
    for (int64_t jp = jp0; jp < jp1; ++jp) {
        const int64_t j0 = jp * GM_NR;
        gm_column_runs(jb, j0, (int)(jb->N - j0 < GM_NR ? jb->N - j0 : GM_NR), &runs[jp - jp0]);
    }
    for (int64_t p0 = 0, kb = 0; p0 < jb->K; p0 += kb) {
        /* K blocks of at most kc, none crossing a segment end */
        const int64_t seg_end = p0 / jb->kseg * jb->kseg + jb->kseg;
        const int64_t end = seg_end < jb->K ? seg_end : jb->K;
        kb = end - p0 < jb->kc ? end - p0 : jb->kc;
        for (int64_t jp = jp0; jp < jp1; ++jp) {
            const int64_t j0 = jp * GM_NR;
            const int nr = (int)(jb->N - j0 < GM_NR ? jb->N - j0 : GM_NR);
            gm_pack_b(&jb->b, g, p0, kb, j0, nr, bbuf + (jp - jp0) * kb * GM_NR);
        }
        for (int64_t ip = ip0; ip < ip1; ++ip) {
            const float *apanel = jb->apack + ((g * jb->mpanels + ip) * jb->K + p0) * GM_MR;
            const int64_t i0 = ip * GM_MR;
            const int mr = (int)(jb->M - i0 < GM_MR ? jb->M - i0 : GM_MR);
            for (int64_t jp = jp0; jp < jp1; ++jp) {
                const int64_t j0 = jp * GM_NR;
                const int nr = (int)(jb->N - j0 < GM_NR ? jb->N - j0 : GM_NR);
                const int64_t ksub = jb->ksub > 0 ? jb->ksub : kb;
                if (nr <= GM_NR / 2)
                    gm_kernel_half(kb, ksub, apanel, bbuf + (jp - jp0) * kb * GM_NR, tile);
                else
                    gm_kernel(kb, ksub, apanel, bbuf + (jp - jp0) * kb * GM_NR, tile);
                gm_store(jb, g, i0, mr, j0, &runs[jp - jp0], tile, p0 == 0);
            }
        }
    }
}

/* Cut the product into tasks for `threads` threads: column chunks of at most GM_NC_PANELS panels,
 * smaller (and then row chunks too) until there are a few tasks per thread. */
static void gm_plan(gm_job_t *jb, int threads) {
    if (jb->kseg <= 0 || jb->kseg > jb->K) jb->kseg = jb->K;
    jb->kc = gm_kc(jb->kseg, jb->kc_max > 0 ? jb->kc_max : GM_KC);
    jb->mpanels = (jb->M + GM_MR - 1) / GM_MR;
    jb->npanels = (jb->N + GM_NR - 1) / GM_NR;
    int64_t nchunks = (jb->npanels + GM_NC_PANELS - 1) / GM_NC_PANELS, mchunks = 1;
    if (threads > 1) {
        const int64_t want = 4 * (int64_t)threads;   /* a few tasks per thread: a late thread does fewer */
        while (jb->G * nchunks < want && nchunks < jb->npanels) ++nchunks;
        while (jb->G * nchunks * mchunks < 2 * (int64_t)threads && mchunks * 2 <= jb->mpanels) ++mchunks;
    }
    jb->ncp = (jb->npanels + nchunks - 1) / nchunks;
    jb->nchunks = (jb->npanels + jb->ncp - 1) / jb->ncp;
    jb->mcp = (jb->mpanels + mchunks - 1) / mchunks;
    jb->mchunks = (jb->mpanels + jb->mcp - 1) / jb->mcp;
}

/* Floats of A packed for the product (G groups of M x K). */
static int64_t gm_packed_size(int64_t M, int64_t K, int G) { return G * ((M + GM_MR - 1) / GM_MR) * K * GM_MR; }

/* Pack jb's A into dst (gm_packed_size floats), for products that pass it as jb->apacked. */
static void gm_pack_a_all(gm_job_t *jb, float *dst, int threads) {
    jb->mpanels = (jb->M + GM_MR - 1) / GM_MR;
    jb->apack = dst;
    pk_parallel_for(jb->G * jb->mpanels, gm_pack_a_task, jb, threads);
}

/* Run the product on up to `threads` threads; 0, or -1 when a buffer could not be allocated. */
static int gm_run(gm_job_t *jb, int threads) {
    if (jb->M <= 0 || jb->N <= 0 || jb->G <= 0) return 0;
    gm_plan(jb, threads);
    jb->failed = 0;
    if (jb->apacked) {
        jb->apack = (float *)jb->apacked;
    } else {
        jb->apack = gm_thread_buffer(1, gm_packed_size(jb->M, jb->K, jb->G));
        if (!jb->apack) return -1;
        pk_parallel_for(jb->G * jb->mpanels, gm_pack_a_task, jb, threads);
    }
    pk_parallel_for(jb->G * jb->mchunks * jb->nchunks, gm_product_task, jb, threads);
    return jb->failed ? -1 : 0;
}

/* ---- few rows times a transposed operand: dot products --------------------------------------- */

/* C (M x N) = [beta ? C : 0] + bias + A (M x K) . W^T for a few rows of A and W (N x K) row-major:
 * every element is one dot product of two contiguous rows, W read once, as it streams from memory
 * (the inner product at batch 1-8, where packing W for the blocked product would cost more than
 * the product). Tasks are runs of GM_DOT_ROWS rows of W. */
#define GM_DOT_ROWS 64
#define GM_DOT_MAX_M 4

typedef struct {
    int64_t M, N, K, lda, ldw, ldc;
    const float *a, *w, *bias;
    float *c;
    int beta;
} gm_dot_t;

/* out[m] = sum_k x_m[k] * w[k] for the M (<= GM_DOT_MAX_M) rows x_m = a + m*lda: one pass over w. */
static inline void gm_dots(const float *__restrict a, int64_t lda, int M, const float *__restrict w, int64_t K,
                           float *out) {
#if defined(__AVX512F__)
    __m512 s[GM_DOT_MAX_M][2];
    for (int m = 0; m < GM_DOT_MAX_M; ++m) s[m][0] = s[m][1] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        const __m512 w0 = _mm512_loadu_ps(w + k), w1 = _mm512_loadu_ps(w + k + 16);
        for (int m = 0; m < M; ++m) {
            s[m][0] = _mm512_fmadd_ps(_mm512_loadu_ps(a + m * lda + k), w0, s[m][0]);
            s[m][1] = _mm512_fmadd_ps(_mm512_loadu_ps(a + m * lda + k + 16), w1, s[m][1]);
        }
    }
    for (; k < K; k += 16) {
        const __mmask16 mk = (__mmask16)(K - k >= 16 ? 0xffff : (1u << (K - k)) - 1);
        const __m512 w0 = _mm512_maskz_loadu_ps(mk, w + k);
        for (int m = 0; m < M; ++m)
            s[m][0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, a + m * lda + k), w0, s[m][0]);
    }
    for (int m = 0; m < M; ++m) out[m] = _mm512_reduce_add_ps(_mm512_add_ps(s[m][0], s[m][1]));
#else
    for (int m = 0; m < M; ++m) {
        const float *x = a + m * lda;
        float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t k = 0;
        for (; k + 8 <= K; k += 8)
            for (int l = 0; l < 8; ++l) s[l] += x[k + l] * w[k + l];
        for (; k < K; ++k) s[0] += x[k] * w[k];
        out[m] = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
    }
#endif
}

static void gm_dot_task(void *ctx, int64_t task, int worker) {
    (void)worker;
    const gm_dot_t *d = (const gm_dot_t *)ctx;
    const int64_t n1 = (task + 1) * GM_DOT_ROWS < d->N ? (task + 1) * GM_DOT_ROWS : d->N;
    float dots[GM_DOT_MAX_M];
    for (int64_t n = task * GM_DOT_ROWS; n < n1; ++n) {
        gm_dots(d->a, d->lda, (int)d->M, d->w + n * d->ldw, d->K, dots);
        for (int64_t m = 0; m < d->M; ++m) {
            float *out = d->c + m * d->ldc + n;
            const float v = dots[m] + (d->bias ? d->bias[n] : 0.0f);
            *out = d->beta ? *out + v : v;
        }
    }
}

static void gm_dot_run(gm_dot_t *d, int threads) {
    pk_parallel_for((d->N + GM_DOT_ROWS - 1) / GM_DOT_ROWS, gm_dot_task, d, threads);
}

#endif /* PYSKIM_GEMM_IMPL_H */
