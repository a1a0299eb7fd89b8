/* The implicit im2col packing of pyskim's dense products (gemm_impl.h): B panels of Caffe's column
 * matrix (or its transpose) read straight from the images, never written as a matrix. */
#ifndef PYSKIM_GEMM_IM2COL_H
#define PYSKIM_GEMM_IM2COL_H

#include "gemm_defs.h"

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

#if defined(__AVX2__) && !defined(__AVX512F__)
/* AVX2's masks are vectors: lanes [8v, 8v + 8) of a lane bitmask as a vector of 0 / -1. */
static inline __m256i gm_lane_mask8(uint32_t bits, int v) {
    const __m256i lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i m = _mm256_and_si256(_mm256_set1_epi32((int)(bits >> (8 * v))), lane);
    return _mm256_cmpeq_epi32(m, lane);
}

/* Lanes of v (signed int32) that are >= 0 and < bound, as AVX2's unsigned compare: both sides'
 * sign bits flipped, then a signed compare. */
static inline __m256i gm_in_range8(__m256i v, __m256i bound_flipped) {
    return _mm256_cmpgt_epi32(bound_flipped, _mm256_xor_si256(v, _mm256_set1_epi32((int)0x80000000u)));
}
#endif

#if defined(__AVX512F__) || defined(__AVX2__)
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
#if defined(__AVX512F__)
        __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
        for (int r = 0; r < nruns; ++r) {
            /* a row outside the image loads nothing (mask 0) */
            const uint32_t m = (unsigned)(run_ih[r] + tap.di) < (unsigned)H ? masks[r][tap.j] : 0;
            lo = _mm512_mask_loadu_ps(lo, (__mmask16)m, src + run_at[r]);
            hi = _mm512_mask_loadu_ps(hi, (__mmask16)(m >> 16), src + run_at[r] + 16);
        }
        _mm512_store_ps(dst, lo);
        _mm512_store_ps(dst + 16, hi);
#else
        /* runs hold disjoint lanes and a masked load zeroes the others (touching no memory there) */
        __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
        for (int r = 0; r < nruns; ++r) {
            const uint32_t m = (unsigned)(run_ih[r] + tap.di) < (unsigned)H ? masks[r][tap.j] : 0;
            if (!m) continue;
            lo = _mm256_or_ps(lo, _mm256_maskload_ps(src + run_at[r], gm_lane_mask8(m, 0)));
            hi = _mm256_or_ps(hi, _mm256_maskload_ps(src + run_at[r] + 8, gm_lane_mask8(m, 1)));
        }
        _mm256_store_ps(dst, lo);
        _mm256_store_ps(dst + 8, hi);
#endif
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
#if defined(__AVX512F__) || defined(__AVX2__)
    if (o->sw == 1 && o->dw == 1 && o->kw <= GM_MAX_KW) {
        gm_pack_b_im2col_rows(o, base, start, ih0, iw0, p0, kb, nr, dst);
        return;
    }
    /* gathers with 32-bit offsets from the panel's first position (other strides: AlexNet's conv1) */
    if (start[nr - 1] - start[0] + (int64_t)o->C * H * W < 0x7fffffffLL) {
        const float *pbase = base + start[0];
        int32_t rel[GM_NR] __attribute__((aligned(64))), vih[GM_NR] __attribute__((aligned(64))),
            viw[GM_NR] __attribute__((aligned(64)));
        for (int t = 0; t < GM_NR; ++t) {
            rel[t] = t < nr ? (int32_t)(start[t] - start[0]) : 0;
            vih[t] = t < nr ? ih0[t] : -0x40000000;
            viw[t] = t < nr ? iw0[t] : -0x40000000;
        }
#if defined(__AVX512F__)
        const __m512i hmax = _mm512_set1_epi32(H), wmax = _mm512_set1_epi32(W);
#else
        const __m256i hmax = _mm256_set1_epi32((int)((unsigned)H ^ 0x80000000u)),
                      wmax = _mm256_set1_epi32((int)((unsigned)W ^ 0x80000000u));
#endif
        gm_tap_t tap;
        gm_tap_init(o, p0, &tap);
        for (int64_t k = 0; k < kb; ++k, dst += GM_NR, gm_tap_next(o, &tap)) {
#if defined(__AVX512F__)
            const __m512i voff = _mm512_set1_epi32((int32_t)tap.off);
            const __m512i vdi = _mm512_set1_epi32(tap.di), vdj = _mm512_set1_epi32(tap.dj);
            for (int v = 0; v < GM_NV; ++v) {
                const __m512i ih = _mm512_add_epi32(_mm512_load_si512(vih + 16 * v), vdi);
                const __m512i iw = _mm512_add_epi32(_mm512_load_si512(viw + 16 * v), vdj);
                const __mmask16 m = _mm512_cmplt_epu32_mask(ih, hmax) & _mm512_cmplt_epu32_mask(iw, wmax);
                const __m512i idx = _mm512_add_epi32(_mm512_load_si512(rel + 16 * v), voff);
                _mm512_store_ps(dst + 16 * v,
                                _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, pbase, 4));
            }
#else
            const __m256i voff = _mm256_set1_epi32((int32_t)tap.off);
            const __m256i vdi = _mm256_set1_epi32(tap.di), vdj = _mm256_set1_epi32(tap.dj);
            for (int v = 0; v < GM_NV; ++v) {
                const __m256i ih = _mm256_add_epi32(_mm256_load_si256((const __m256i *)(vih + 8 * v)), vdi);
                const __m256i iw = _mm256_add_epi32(_mm256_load_si256((const __m256i *)(viw + 8 * v)), vdj);
                const __m256i m = _mm256_and_si256(gm_in_range8(ih, hmax), gm_in_range8(iw, wmax));
                const __m256i idx = _mm256_add_epi32(_mm256_load_si256((const __m256i *)(rel + 8 * v)), voff);
                _mm256_store_ps(dst + 8 * v, _mm256_mask_i32gather_ps(_mm256_setzero_ps(), pbase, idx,
                                                                      _mm256_castsi256_ps(m), 4));
            }
#endif
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

#endif /* PYSKIM_GEMM_IM2COL_H */
