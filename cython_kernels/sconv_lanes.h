/* The batch-interleaved layout's conversions (sconv_impl.h): one row of 16 images into 16-lane
 * positions of the prepared input, and a finished register tile's positions back into the images'
 * output rows. With AVX-512 both go 16 x 16 floats at a time through a transpose in registers; the
 * scalar loops they replace (a float at a time, 16 images apart) took 6% and 13% of AlexNet's conv3 at
 * batch 16 in this layout. Included by sconv_impl.h, after sc_lane_range and sc_phase_columns;
 * everything is static. */
#ifndef PYSKIM_SCONV_LANES_H
#define PYSKIM_SCONV_LANES_H

#if defined(__AVX512F__)
/* The two-source permutes of sc_transpose16: stage s exchanges blocks of b = 8 >> s rows and columns. */
typedef struct {
    __m512i lo[4], hi[4];
} sc_lane_perm_t;

static inline sc_lane_perm_t sc_lane_perms(void) {
    sc_lane_perm_t pm;
    const __m512i k = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    for (int s = 0; s < 4; ++s) {
        const int b = 8 >> s;
        const __mmask16 up = _mm512_test_epi32_mask(k, _mm512_set1_epi32(b));
        /* row i (bit b clear) keeps its columns without bit b and takes row i + b's others, b lanes down;
         * row i + b gives row i its columns with bit b clear, b lanes up, and keeps the others */
        pm.lo[s] = _mm512_mask_add_epi32(k, up, k, _mm512_set1_epi32(16 - b));
        pm.hi[s] = _mm512_mask_add_epi32(_mm512_add_epi32(k, _mm512_set1_epi32(b)), up, k, _mm512_set1_epi32(16));
    }
    return pm;
}

/* r[i][k] -> r[k][i]: every row-column bit in which i and k differ is flipped in both, one bit per
 * stage (4 x 16 two-source permutes). */
static inline void sc_transpose16(__m512 r[16], const sc_lane_perm_t *pm) {
    for (int s = 0; s < 4; ++s) {
        const int b = 8 >> s;
        for (int i = 0; i < 16; ++i) {
            if (i & b) continue;
            const __m512 a = r[i], c = r[i + b];
            r[i] = _mm512_permutex2var_ps(a, pm->lo[s], c);
            r[i + b] = _mm512_permutex2var_ps(a, pm->hi[s], c);
        }
    }
}
#endif

#if !defined(__AVX512F__)
typedef struct {
    int unused;
} sc_lane_perm_t; /* the transposes' permutes exist with AVX-512 only */
static inline sc_lane_perm_t sc_lane_perms(void) {
    sc_lane_perm_t pm = {0};
    return pm;
}
#endif

/* Source row `src` of the group's images (image l at src + l*src_stride, W floats; lanes >= `lanes`
 * zero) into its sw phase rows d + rw*phase_stride of Wq positions of SC_VL floats: source column s
 * at phase (s + pw) % sw, position (s + pw) / sw; positions without a source column zero. `pm`: the
 * caller's sc_lane_perms(), made once per channel rather than per row. */
static void sc_il_fill_row(float *d, int64_t phase_stride, const float *src, int64_t src_stride, int lanes, int W,
                           int pw, int sw, int Wq, const sc_lane_perm_t *pm) {
    for (int rw = 0; rw < sw; ++rw) {
        float *e = d + rw * phase_stride;
        int j0, j1;
        sc_phase_columns(W, pw, sw, rw, Wq, &j0, &j1);
        memset(e, 0, sizeof(float) * j0 * SC_VL);
        memset(e + (int64_t)j1 * SC_VL, 0, sizeof(float) * (Wq - j1) * SC_VL);
    }
#if defined(__AVX512F__)
    for (int s0 = 0; s0 < W; s0 += 16) {
        const int n = W - s0 < 16 ? W - s0 : 16;
        const __mmask16 cols = sc_lane_range(0, n);
        __m512 v[16];
        for (int l = 0; l < 16; ++l)
            v[l] = l < lanes ? _mm512_maskz_loadu_ps(cols, src + l * src_stride + s0) : _mm512_setzero_ps();
        sc_transpose16(v, pm);
        for (int k = 0; k < n; ++k) {
            const int t = s0 + k + pw, j = t / sw;
            if (j < Wq) _mm512_storeu_ps(d + (t % sw) * phase_stride + (int64_t)j * SC_VL, v[k]);
        }
    }
#else
    (void)pm;
    for (int s = 0; s < W; ++s) {
        const int t = s + pw, j = t / sw;
        if (j >= Wq) continue;
        float *e = d + (t % sw) * phase_stride + (int64_t)j * SC_VL;
        for (int l = 0; l < SC_VL; ++l) e[l] = l < lanes ? src[l * src_stride + s] : 0.0f;
    }
#endif
}

/* A finished tile: positions t < cnt of SC_VL lanes at s (s[t*SC_VL + l]), flat with row pitch Wq,
 * the first at column x0 of output row y0, into image l's output plane o + l*img_stride (OW floats
 * a row) for l < lanes; positions past a row's OW columns are dropped; Caffe's ReLU (0 > v ? 0 : v,
 * NaN and -0 kept) when relu. */
static void sc_il_write_tile(const float *s, int cnt, int lanes, float *o, int64_t img_stride, int y0, int x0,
                             int OW, int Wq, int relu, const sc_lane_perm_t *pm) {
#if defined(__AVX512F__)
    const __m512 zero = _mm512_setzero_ps();
    for (int t0 = 0; t0 < cnt; t0 += 16) {
        const int n = cnt - t0 < 16 ? cnt - t0 : 16;
        __m512 v[16];
        for (int k = 0; k < 16; ++k) v[k] = k < n ? _mm512_loadu_ps(s + (int64_t)(t0 + k) * SC_VL) : zero;
        sc_transpose16(v, pm); /* v[l]: image l at positions t0 .. t0 + n - 1 */
        if (relu)
            for (int l = 0; l < lanes; ++l) v[l] = _mm512_max_ps(zero, v[l]);
        for (int k = 0; k < n;) { /* the positions of one output row: lanes [k, k + len) */
            const int flat = x0 + t0 + k, x = flat % Wq;
            const int len = Wq - x < n - k ? Wq - x : n - k;
            const int keep = x < OW ? (OW - x < len ? OW - x : len) : 0;
            if (keep > 0) {
                const __mmask16 sel = sc_lane_range(k, k + keep), first = sc_lane_range(0, keep);
                float *dst = o + (int64_t)(y0 + flat / Wq) * OW + x;
                for (int l = 0; l < lanes; ++l)
                    _mm512_mask_storeu_ps(dst + l * img_stride, first, _mm512_maskz_compress_ps(sel, v[l]));
            }
            k += len;
        }
    }
#else
    (void)pm;
    for (int t = 0; t < cnt; ++t) {
        const int flat = x0 + t, x = flat % Wq;
        if (x >= OW) continue;
        float *dst = o + (int64_t)(y0 + flat / Wq) * OW + x;
        for (int l = 0; l < lanes; ++l) {
            const float v = s[(int64_t)t * SC_VL + l];
            dst[l * img_stride] = relu && v < 0.0f ? 0.0f : v;
        }
    }
#endif
}

#endif
