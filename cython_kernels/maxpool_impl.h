/* MAX pooling forward with horizontal stride 1 or 2: 16 (AVX-512) or 8 (AVX2) outputs of a row at
 * a time, bit for bit Caffe's PoolingLayer MAX forward.
 *
 * Included by pooling.pyx, which checks every geometry first (nothing here checks anything) and
 * runs Caffe's scalar loop for the outputs mp_max_plane leaves: those whose windows start left of
 * the image, and those from the column it returns on.
 *
 * Each lane runs Caffe's loop for one output: from (-FLT_MAX, index -1), over the window clipped to
 * the image row by row, each row left to right, taking a tap only if it is strictly greater (an
 * ordered `>`): the first maximum wins, +0 and -0 tie (the first kept, with its sign), NaN, -inf and
 * -FLT_MAX never win. Lane l of a group is output pw + l, whose tap j of row h is the input column
 * ws0 + l*stride_w + j (ws0 = pw*stride_w - pad_w >= 0).
 *
 * One output's compare-and-select chain is bound by its latency, so MP_ROWS output rows of a group
 * run together (a band of the plane at a time, its groups left to right): each input row their
 * windows hold is loaded once and its taps go to each of those outputs in turn (a row shared by two
 * windows, stride_h < kh, is loaded once for both). For 3x3 windows with strides 2 or 1 and 2x2
 * with stride 2 the compiler knows the shape, and a band whose windows all lie inside the image
 * vertically is unrolled row by row. AVX-512 loads a row's floats once (stride 1: two vectors,
 * stride 2: three) and makes the taps with permutes (stride 2: even and odd columns apart); every
 * output from pw0 to the row's end goes 16 at a time: in a group of fewer than 16 outputs, or whose
 * windows are clipped at the right, the loads are masked to the row and the lanes whose tap is past
 * it take nothing. AVX2 loads each tap (stride 2: two loads and a shuffle) and does only outputs
 * whose windows lie inside the image: where there are at least 8, it ends with a group that
 * overlaps the one before it (those outputs are written twice, the same values). Other builds leave
 * everything to the caller.
 */
#ifndef PYSKIM_MAXPOOL_IMPL_H
#define PYSKIM_MAXPOOL_IMPL_H

#include <float.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define MP_INLINE static inline __attribute__((always_inline))
#define MP_PRAGMA(x) _Pragma(#x)
#define MP_UNROLL MP_PRAGMA(GCC unroll 16)

#define MP_MAX_K 16 /* the widest window (kw) done here; wider: the caller's loop */
#define MP_ROWS 4   /* output rows of a group computed together: a band */

/* One plane of MAX forward. */
typedef struct {
    const float *x; /* H x W inputs */
    float *top;     /* PH x PW outputs */
    int *mask;
    int H, W, PH, PW, kh, kw, pad_h, pad_w, stride_h, stride_w;
} mp_plane_t;

#if defined(__AVX512F__)

#define MP_LANES 16
#define MP_MASKED 1 /* groups of fewer lanes, or clipped at the right, run here */
typedef __m512 mp_vf;
typedef __m512i mp_vi;
typedef __mmask16 mp_lanes_t;

#elif defined(__AVX2__)

#define MP_LANES 8
#define MP_MASKED 0 /* only groups of 8 windows inside the image run here */
typedef __m256 mp_vf;
typedef __m256i mp_vi;
typedef int mp_lanes_t; /* unused: every lane takes part */

#endif

#if defined(MP_LANES)

/* One group of lanes: outputs pw .. pw + n - 1 of every output row. */
typedef struct {
    mp_vi col0;                 /* lane l's first input column: ws0 + l*stride_w (tap j: + j) */
    int pw, ws0, n;             /* lane 0's output column and first input column, lanes stored */
    mp_lanes_t load[3];         /* AVX-512: the floats loaded from ws0 on: [0, 16), [16, 32), [32, 48) */
    mp_lanes_t lanes[MP_MAX_K]; /* AVX-512, clipped groups: the lanes whose tap j is in the image */
} mp_group_t;

#endif

#if defined(__AVX512F__)

MP_INLINE __mmask16 mp_first(int n) { return (__mmask16)(n >= 16 ? 0xffff : n <= 0 ? 0 : (1u << n) - 1); }
MP_INLINE mp_vf mp_lowest(void) { return _mm512_set1_ps(-FLT_MAX); }
MP_INLINE mp_vi mp_int(int a) { return _mm512_set1_epi32(a); }
MP_INLINE mp_vi mp_add(mp_vi a, mp_vi b) { return _mm512_add_epi32(a, b); }
MP_INLINE mp_vi mp_lane(void) {
    return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

/* The masks of group g (ws0 and n set) in a row W wide; returns whether it is clipped: whether some
 * lane below n has a tap past the row's end. */
static int mp_group_masks(mp_group_t *g, int W, int kw, int stride_w) {
    const int room = W - g->ws0; /* floats from lane 0's first tap to the row's end */
    const int span = (g->n - 1) * stride_w + kw;
    int clipped = 0;
    for (int k = 0; k < 3; ++k) g->load[k] = mp_first((span < room ? span : room) - 16 * k);
    for (int j = 0; j < kw; ++j) {
        const int fit = room - j <= 0 ? 0 : (room - j + stride_w - 1) / stride_w; /* lanes, tap j inside */
        g->lanes[j] = mp_first(fit < g->n ? fit : g->n);
        clipped |= fit < g->n;
    }
    return clipped;
}

/* Taps [0, taps) of one input row into t, lane 0's first tap at row[0]; the floats g loads, the
 * others 0. */
MP_INLINE void mp_row_taps(const float *row, int stride_w, int taps, const mp_group_t *g, mp_vf *t) {
    const __m512 a = _mm512_maskz_loadu_ps(g->load[0], row), b = _mm512_maskz_loadu_ps(g->load[1], row + 16);
    if (stride_w == 1) {
        t[0] = a; /* tap j: floats j .. j + 15 */
        MP_UNROLL for (int j = 1; j < taps; ++j)
            t[j] = _mm512_permutex2var_ps(a, mp_add(mp_lane(), mp_int(j)), b);
        return;
    }
    const __m512i even = mp_add(mp_lane(), mp_lane()), odd = mp_add(even, mp_int(1));
    t[0] = _mm512_permutex2var_ps(a, even, b); /* floats 0, 2, .., 30 */
    if (taps > 1) t[1] = _mm512_permutex2var_ps(a, odd, b);
    if (taps <= 2) return;
    /* tap 2m (2m + 1): t[0] (t[1]) m lanes on, then floats 32, 34, .. (33, 35, ..): c's even (odd)
     * elements; with 3 taps only float 32 is needed, c's first */
    const __m512 c = _mm512_maskz_loadu_ps(g->load[2], row + 32);
    const __m512 c_even = taps <= 3 ? c : _mm512_permutexvar_ps(even, c);
    const __m512 c_odd = taps <= 3 ? c : _mm512_permutexvar_ps(odd, c);
    MP_UNROLL for (int j = 2; j < taps; ++j)
        t[j] = _mm512_permutex2var_ps(t[j & 1], mp_add(mp_lane(), mp_int(j / 2)), j & 1 ? c_odd : c_even);
}

/* Take (v_new, row + col) where v_new > v (ordered: never a NaN), in the lanes given (clipped) or all. */
MP_INLINE void mp_take(mp_vf *v, mp_vi *i, mp_vf v_new, mp_vi row, mp_vi col, mp_lanes_t lanes, int clipped) {
    const __mmask16 gt = clipped ? _mm512_mask_cmp_ps_mask(lanes, v_new, *v, _CMP_GT_OQ)
                                 : _mm512_cmp_ps_mask(v_new, *v, _CMP_GT_OQ);
    *v = _mm512_mask_mov_ps(*v, gt, v_new);
    *i = _mm512_mask_add_epi32(*i, gt, row, col);
}

/* Lanes [0, n) of (v, i) to top and mask. */
MP_INLINE void mp_store(float *top, int *mask, mp_vf v, mp_vi i, int n) {
    _mm512_mask_storeu_ps(top, mp_first(n), v);
    _mm512_mask_storeu_epi32(mask, mp_first(n), i);
}

#elif defined(__AVX2__)

MP_INLINE mp_vf mp_lowest(void) { return _mm256_set1_ps(-FLT_MAX); }
MP_INLINE mp_vi mp_int(int a) { return _mm256_set1_epi32(a); }
MP_INLINE mp_vi mp_add(mp_vi a, mp_vi b) { return _mm256_add_epi32(a, b); }
MP_INLINE mp_vi mp_lane(void) { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }

/* Groups are never clipped here. */
static int mp_group_masks(mp_group_t *g, int W, int kw, int stride_w) {
    (void)g, (void)W, (void)kw, (void)stride_w;
    return 0;
}

/* Taps [0, taps) of one input row into t, lane 0's first tap at row[0] (reads row[0 .. 7*stride_w +
 * taps - 1] only). */
MP_INLINE void mp_row_taps(const float *row, int stride_w, int taps, const mp_group_t *g, mp_vf *t) {
    (void)g;
    MP_UNROLL for (int j = 0; j < taps; ++j) {
        if (stride_w == 1) {
            t[j] = _mm256_loadu_ps(row + j);
        } else { /* a = row[j..j+7], b = row[j+7..j+14]: per half (a0 a2 b1 b3) (a4 a6 b5 b7), then the
                  * 64-bit pairs reordered */
            const __m256 mixed = _mm256_shuffle_ps(_mm256_loadu_ps(row + j), _mm256_loadu_ps(row + j + 7),
                                                   _MM_SHUFFLE(3, 1, 2, 0));
            t[j] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(mixed), _MM_SHUFFLE(3, 1, 2, 0)));
        }
    }
}

/* Take (v_new, row + col) where v_new > v (ordered compare: never a NaN). */
MP_INLINE void mp_take(mp_vf *v, mp_vi *i, mp_vf v_new, mp_vi row, mp_vi col, mp_lanes_t lanes, int clipped) {
    (void)lanes, (void)clipped;
    const __m256 gt = _mm256_cmp_ps(v_new, *v, _CMP_GT_OQ);
    const __m256 i_new = _mm256_castsi256_ps(mp_add(row, col));
    *v = _mm256_blendv_ps(*v, v_new, gt);
    *i = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(*i), i_new, gt));
}

/* (v, i) to top and mask (8 lanes). */
MP_INLINE void mp_store(float *top, int *mask, mp_vf v, mp_vi i, int n) {
    (void)n;
    _mm256_storeu_ps(top, v);
    _mm256_storeu_si256((__m256i *)mask, i);
}

#endif

#if defined(MP_LANES)

/* The taps of input row h (all of them: taps) to the outputs of a band whose windows hold it (r in
 * holds): in each lane the next steps of Caffe's loop. */
MP_INLINE void mp_row_to_outputs(const mp_plane_t *p, const mp_group_t *g, int stride_w, int taps,
                                 int clipped, int h, const int *holds, mp_vf *v, mp_vi *i) {
    mp_vf t[MP_MAX_K];
    mp_row_taps(p->x + (long)h * p->W + g->ws0, stride_w, taps, g, t);
    const mp_vi first_index = mp_add(g->col0, mp_int(h * p->W)); /* of each lane's tap 0 */
    MP_UNROLL for (int r = 0; r < MP_ROWS; ++r) {
        if (holds[r]) {
            MP_UNROLL for (int j = 0; j < taps; ++j)
                mp_take(&v[r], &i[r], t[j], first_index, mp_int(j), g->lanes[j], clipped);
        }
    }
}

/* Lanes [0, g->n) of the band of output rows [ph0, ph0 + MP_ROWS) of plane p (those below PH):
 * Caffe's loop per lane (see the top of this file), every input row loaded once. kh and stride_h:
 * 0 for p's, or p's as constants the compiler knows; then a band whose windows all lie inside the
 * image vertically is unrolled row by row. stride_w and taps (kw): p's, constants where known. */
MP_INLINE void mp_max_band(const mp_plane_t *p, const mp_group_t *g, int ph0, int stride_w, int taps,
                            int clipped, int kh, int stride_h) {
    const int known = kh != 0;
    kh = known ? kh : p->kh;
    stride_h = known ? stride_h : p->stride_h;
    mp_vf v[MP_ROWS];
    mp_vi i[MP_ROWS];
    MP_UNROLL for (int r = 0; r < MP_ROWS; ++r) {
        v[r] = mp_lowest();
        i[r] = mp_int(-1);
    }
    const int hs0 = ph0 * stride_h - p->pad_h;
    if (known && hs0 >= 0 && ph0 + MP_ROWS <= p->PH && hs0 + (MP_ROWS - 1) * stride_h + kh <= p->H) {
        MP_UNROLL for (int d = 0; d < (MP_ROWS - 1) * stride_h + kh; ++d) {
            int holds[MP_ROWS], held = 0;
            MP_UNROLL for (int r = 0; r < MP_ROWS; ++r)
                held |= holds[r] = r * stride_h <= d && d < r * stride_h + kh;
            if (held) mp_row_to_outputs(p, g, stride_w, taps, clipped, hs0 + d, holds, v, i);
        }
    } else {
        int hs[MP_ROWS], he[MP_ROWS], h_end = 0;
        MP_UNROLL for (int r = 0; r < MP_ROWS; ++r) {
            /* Caffe's window rows [hs, he) clipped to the image; empty past the last output row */
            hs[r] = (ph0 + r) * stride_h - p->pad_h;
            he[r] = ph0 + r < p->PH ? hs[r] + kh : hs[r];
            he[r] = he[r] < p->H ? he[r] : p->H;
            hs[r] = hs[r] > 0 ? hs[r] : 0;
            h_end = he[r] > h_end ? he[r] : h_end;
        }
        for (int h = hs[0]; h < h_end; ++h) {
            int holds[MP_ROWS], held = 0;
            MP_UNROLL for (int r = 0; r < MP_ROWS; ++r) held |= holds[r] = hs[r] <= h && h < he[r];
            if (held) mp_row_to_outputs(p, g, stride_w, taps, clipped, h, holds, v, i);
        }
    }
    MP_UNROLL for (int r = 0; r < MP_ROWS; ++r) {
        if (ph0 + r < p->PH) {
            const long at = (long)(ph0 + r) * p->PW + g->pw;
            mp_store(p->top + at, p->mask + at, v[r], i[r], g->n);
        }
    }
}

/* mp_max_band with the window's shape known to the compiler for common windows. */
static void mp_max_group_band(const mp_plane_t *p, const mp_group_t *g, int ph0, int clipped) {
    const int sw = p->stride_w, kw = p->kw, sh = p->stride_h, kh = p->kh;
    if (sw == 2 && kw == 3 && sh == 2 && kh == 3) { /* CIFAR-10's, AlexNet's, GoogLeNet's */
        if (clipped)
            mp_max_band(p, g, ph0, 2, 3, 1, 3, 2);
        else
            mp_max_band(p, g, ph0, 2, 3, 0, 3, 2);
    } else if (sw == 1 && kw == 3 && sh == 1 && kh == 3) { /* GoogLeNet's inception pooling */
        if (clipped)
            mp_max_band(p, g, ph0, 1, 3, 1, 3, 1);
        else
            mp_max_band(p, g, ph0, 1, 3, 0, 3, 1);
    } else if (sw == 2 && kw == 2 && sh == 2 && kh == 2) { /* LeNet's, VGG's */
        if (clipped)
            mp_max_band(p, g, ph0, 2, 2, 1, 2, 2);
        else
            mp_max_band(p, g, ph0, 2, 2, 0, 2, 2);
    } else if (clipped) {
        mp_max_band(p, g, ph0, sw, kw, 1, 0, 0);
    } else {
        mp_max_band(p, g, ph0, sw, kw, 0, 0, 0);
    }
}

/* Columns [pw0, end) of every output row of plane p, Caffe's MAX forward (see the top of this file),
 * where output pw0's window starts inside the image and stride_w is 1 or 2: MP_ROWS output rows at a
 * time, their groups left to right (the input read a band of rows at a time). end: PW with AVX-512,
 * with AVX2 where the windows inside the image end (pw0 if fewer than 8 are); pw0 if kw is over
 * MP_MAX_K. Returns end. */
static int mp_max_plane(const mp_plane_t *p, int pw0) {
    if (p->kw > MP_MAX_K) return pw0;
    /* the outputs whose windows end inside the image: [0, inner) */
    int inner = p->W + p->pad_w < p->kw ? 0 : (p->W + p->pad_w - p->kw) / p->stride_w + 1;
    inner = inner < p->PW ? inner : p->PW;
    const int end = MP_MASKED ? p->PW : inner - pw0 < MP_LANES ? pw0 : inner;
    const mp_vi lane_col = p->stride_w == 1 ? mp_lane() : mp_add(mp_lane(), mp_lane());
    mp_group_t inside, other; /* groups of MP_LANES windows inside the image (the same masks), others */
    inside.n = MP_LANES;
    inside.ws0 = -1;
    for (int ph0 = 0; ph0 < p->PH; ph0 += MP_ROWS) {
        for (int pw = pw0; pw < end; pw += MP_LANES) {
            const int at = MP_MASKED || pw + MP_LANES <= end ? pw : end - MP_LANES; /* AVX2: last overlaps */
            mp_group_t *g = at + MP_LANES <= inner ? &inside : &other;
            if (g == &inside && inside.ws0 < 0) { /* the first: its masks */
                inside.ws0 = at * p->stride_w - p->pad_w;
                mp_group_masks(&inside, p->W, p->kw, p->stride_w);
            }
            g->pw = at;
            g->ws0 = at * p->stride_w - p->pad_w;
            g->n = end - at < MP_LANES ? end - at : MP_LANES;
            g->col0 = mp_add(lane_col, mp_int(g->ws0));
            mp_max_group_band(p, g, ph0, g == &other && mp_group_masks(&other, p->W, p->kw, p->stride_w));
        }
    }
    return end;
}

#else

/* No vector unit assumed: the caller's loop does the whole plane. */
static int mp_max_plane(const mp_plane_t *p, int pw0) {
    (void)p;
    return pw0;
}

#endif

#endif /* PYSKIM_MAXPOOL_IMPL_H */
