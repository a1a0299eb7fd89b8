/* Direct sparse convolution kernels (float32, on pyskim's thread pool); the sparse fully-connected
 * kernel, which shares the register-tile types, is in sfc_impl.h.
 *
 * Included by sparse_conv.pyx; everything here is static. The Cython wrapper validates every
 * array and geometry before calling in, so these functions do no checking of their own.
 *
 * Convolution ("stride-1 problem" form). The input of one image is a prepared buffer: channel c,
 * phase (rh, rw) of the stride, row i, column j at ((c*S + rh*sw + rw)*Hq + i)*Wq + j holding
 * padded[c][i*sh + rh][j*sw + rw] (zero outside the padded image), S = sh*sw. For stride 1 this is
 * the conventional zero-padded copy C x Hp x Wp; for stride s every tap becomes a unit-stride run
 * in one phase plane. The row pitch Wq may be less than ceil(Wp/sw): right-hand zero columns are
 * dropped where the next row's left-hand zeros can stand in for them (SkimCaffe's one-sided
 * padding; chosen by pyskim.sparse.ops). A weight (oc, ic, kh, kw) becomes one column offset;
 * output (y, x) reads buffer[offset + y*Wq + x] for every nonzero. The output plane is therefore computed as a flat
 * run of L = (OH-1)*Wq + OW positions p = y*Wq + x (the Wq - OW positions at the end of each row
 * are computed and thrown away), in vectors of SC_VL floats: every nonzero is one broadcast
 * multiply-add per vector, with unaligned loads and no index arithmetic.
 *
 * Work item = (image, group, block of OCB output channels, tile of T <= SC_TMAX vectors). The T
 * accumulators of one output channel stay in registers while its nonzeros of one input-channel
 * block are applied (SkimCaffe's register tile); partial sums over input-channel blocks live in a
 * small per-worker scratch, so that one block of input channels is reused from cache by all OCB
 * output channels before the next block is touched. The bias initialises the accumulators of the
 * first block; ReLU is applied when the finished tile is written out (dropping the thrown-away
 * positions).
 *
 * A batch-interleaved layout (sc_prepare_il_channel, below; sc_conv with `interleaved`) puts 16 images
 * in one vector instead of 16 positions (aligned loads, no thrown-away lanes; its conversions are in
 * sconv_lanes.h); it needs 16x the cache per input channel and is the default only for dense-ish
 * layers. Both layouts share the register-tile kernels and the driver (sc_conv).
 *
 * Aligned loads: with rows of whole vectors and one shifted copy of each input channel per
 * distinct tap column offset (mod 16), every load of a register tile is 64-byte aligned (see
 * sc_prep_t). On Intel cores a load that crosses a cache line costs two L1 accesses; the copies
 * cost cache instead, so pyskim.kernels.sparse uses them on Intel CPUs (sc_split_loads_cost) for
 * stride-1 layers where they pay (1.1-1.2x on AlexNet's 3x3 layers on a Xeon; no faster on AMD's
 * Zen 5 and 1.1-1.25x slower on Zen 3, whose split loads are cheap).
 * Rejected there: 2-source permutes of aligned loads instead of unaligned loads (slower).
 */
#ifndef PYSKIM_SCONV_IMPL_H
#define PYSKIM_SCONV_IMPL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "pool_api.h"

#define SC_VL 16 /* floats per tile vector: the layout unit, the same on every ISA */

/* The registers' own vectors (SC_NL floats): a tile vector is SC_NPV of them. The tile kernels
 * work in these, never in 64-byte vectors of GCC's extension where the ISA's registers are narrower:
 * GCC keeps those on the stack (AlexNet's conv3 ran at 7 GFLOPS on an AVX2 Zen 3). */
#if defined(__AVX512F__)
#define SC_NL 16
#define SC_TMAX 28 /* accumulators in 32 zmm registers */
#define SC_FMT 8
#elif defined(__AVX__)
#define SC_NL 8
#define SC_TMAX 6 /* 12 of 16 ymm registers */
#define SC_FMT 3
#else
#define SC_NL 4
#define SC_TMAX 3 /* 12 of 16 xmm registers */
#define SC_FMT 2
#endif
#define SC_NPV (SC_VL / SC_NL)

typedef float sc_n __attribute__((vector_size(SC_NL * 4)));
typedef float sc_nu __attribute__((vector_size(SC_NL * 4), aligned(4), may_alias));

#define SC_PRAGMA(x) _Pragma(#x)
#define SC_UNROLL SC_PRAGMA(GCC unroll 32)

/* One input-channel block of `noc` output channels on a tile of T vectors: for channel r < noc,
 * whose nonzeros of the block are [bp[r*bstride], bp[r*bstride + 1]),
 * acc_r[t] = (first ? bias[r] (0 without a bias) : acc_r[t]) + sum_j val[j] * in[(col[j] << SHIFT) + SC_VL*t ..]
 * for t < T, acc_r at scr + r*sstride; the T vectors stay in registers while a channel's nonzeros
 * are applied (the first block starts them from the bias). One call per block rather than per
 * channel: a call per channel (call, vzeroupper, pointer loads) cost AlexNet's layers up to 7%.
 * SHIFT 0: spatial layout (unaligned loads); SHIFT 4: batch-interleaved layout (16 images per
 * position, aligned addresses). */
#define SC_DEF_TILE(NAME, T, SHIFT)                                                          \
    static void NAME##_##T(const float *__restrict in, const int32_t *__restrict col,        \
                           const float *__restrict val, const int32_t *bp, int64_t bstride,  \
                           int noc, int first, const float *bias, float *__restrict scr,     \
                           int64_t sstride) {                                                \
        enum { V = T * SC_NPV };                                                             \
        for (int r = 0; r < noc; ++r, bp += bstride, scr += sstride) {                       \
            const int64_t j0 = bp[0], j1 = bp[1];                                            \
            sc_n a[V];                                                                       \
            if (first) {                                                                     \
                const float b0 = bias ? bias[r] : 0.0f;                                      \
                SC_UNROLL for (int v = 0; v < V; ++v) a[v] = b0 - (sc_n){0};                 \
            } else if (j1 > j0) {                                                            \
                SC_UNROLL for (int v = 0; v < V; ++v) a[v] = ((const sc_n *)scr)[v];         \
            } else {                                                                         \
                continue;                                                                    \
            }                                                                                \
            for (int64_t j = j0; j < j1; ++j) {                                              \
                const float *p = in + ((int64_t)col[j] << (SHIFT));                          \
                const sc_n w = val[j] - (sc_n){0};                                           \
                SC_UNROLL for (int v = 0; v < V; ++v) a[v] += w * *(const sc_nu *)(p + SC_NL * v); \
            }                                                                                \
            SC_UNROLL for (int v = 0; v < V; ++v)((sc_n *)scr)[v] = a[v];                    \
        }                                                                                    \
    }

typedef void (*sc_tile_fn)(const float *, const int32_t *, const float *, const int32_t *, int64_t, int,
                           int, const float *, float *, int64_t);

#define SC_TILES_3(N, S) SC_DEF_TILE(N, 1, S) SC_DEF_TILE(N, 2, S) SC_DEF_TILE(N, 3, S)
#define SC_TILES_6(N, S) SC_TILES_3(N, S) SC_DEF_TILE(N, 4, S) SC_DEF_TILE(N, 5, S) SC_DEF_TILE(N, 6, S)
#define SC_TILES_28(N, S) SC_TILES_6(N, S)                                                   \
    SC_DEF_TILE(N, 7, S) SC_DEF_TILE(N, 8, S) SC_DEF_TILE(N, 9, S) SC_DEF_TILE(N, 10, S)     \
    SC_DEF_TILE(N, 11, S) SC_DEF_TILE(N, 12, S) SC_DEF_TILE(N, 13, S) SC_DEF_TILE(N, 14, S)  \
    SC_DEF_TILE(N, 15, S) SC_DEF_TILE(N, 16, S) SC_DEF_TILE(N, 17, S) SC_DEF_TILE(N, 18, S)  \
    SC_DEF_TILE(N, 19, S) SC_DEF_TILE(N, 20, S) SC_DEF_TILE(N, 21, S) SC_DEF_TILE(N, 22, S)  \
    SC_DEF_TILE(N, 23, S) SC_DEF_TILE(N, 24, S) SC_DEF_TILE(N, 25, S) SC_DEF_TILE(N, 26, S)  \
    SC_DEF_TILE(N, 27, S) SC_DEF_TILE(N, 28, S)

#define SC_TABLE_3(NAME) 0, NAME##_1, NAME##_2, NAME##_3
#define SC_TABLE_6(NAME) SC_TABLE_3(NAME), NAME##_4, NAME##_5, NAME##_6
#define SC_TABLE_28(NAME) SC_TABLE_6(NAME), NAME##_7, NAME##_8, NAME##_9, NAME##_10, NAME##_11, \
    NAME##_12, NAME##_13, NAME##_14, NAME##_15, NAME##_16, NAME##_17, NAME##_18, NAME##_19,     \
    NAME##_20, NAME##_21, NAME##_22, NAME##_23, NAME##_24, NAME##_25, NAME##_26, NAME##_27, NAME##_28

#if SC_TMAX >= 28
SC_TILES_28(sc_tile, 0)
SC_TILES_28(sc_itile, 4)
static const sc_tile_fn sc_tiles[SC_TMAX + 1] = {SC_TABLE_28(sc_tile)};
static const sc_tile_fn sc_itiles[SC_TMAX + 1] = {SC_TABLE_28(sc_itile)};
#elif SC_TMAX >= 6
SC_TILES_6(sc_tile, 0)
SC_TILES_6(sc_itile, 4)
static const sc_tile_fn sc_tiles[SC_TMAX + 1] = {SC_TABLE_6(sc_tile)};
static const sc_tile_fn sc_itiles[SC_TMAX + 1] = {SC_TABLE_6(sc_itile)};
#else
SC_TILES_3(sc_tile, 0)
SC_TILES_3(sc_itile, 4)
static const sc_tile_fn sc_tiles[SC_TMAX + 1] = {SC_TABLE_3(sc_tile)};
static const sc_tile_fn sc_itiles[SC_TMAX + 1] = {SC_TABLE_3(sc_itile)};
#endif

static int sc_max_tile(void) { return SC_TMAX; }

/* Whether this CPU pays twice for a load that crosses a cache line (two L1 accesses): Intel's cores
 * do; AMD's Zen cores split such loads cheaply (aligned plans ran 1.1-1.25x slower on a Zen 3). */
static int sc_split_loads_cost(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_is("intel");
#else
    return 0;
#endif
}

static int64_t sc_num_vectors(int OH, int OW, int Wq) {
    int64_t L = (int64_t)(OH - 1) * Wq + OW;
    return (L + SC_VL - 1) / SC_VL;
}

/* One row of every stride phase: dst[rw][j] = src[j*sw + rw - pw] for 0 <= j*sw + rw - pw < W,
 * else 0, for rw < sw and j < Wq (dst[rw] = dst0 + rw*phase_stride). Rows are short (7-60 floats)
 * and there are C*Hq of them per image, so the per-row cost is what matters. With AVX-512 every
 * stride goes 16 floats at a time: stride 1 with masked loads and stores (a 1x1 layer of 512
 * channels at 14x14 prepared 5x faster than with plain loops); strides 2 and 4 with masked loads
 * and permutes, other strides with masked gathers (AlexNet's conv1, stride 4: the scalar copy had
 * been a fifth of its time at density 0.1; the layer runs 1.10-1.13x faster with permutes, 1.03-1.06x
 * with gathers). Otherwise plain loops without library calls (no loop distribution: a memset/memcpy
 * call per row costs more than the copy itself). */
/* The columns [j0, j1) of stride phase rw (of sw) that hold source columns j*sw + rw - pw in [0, W),
 * clipped to the row pitch Wq; the others are zero padding. */
static inline void sc_phase_columns(int W, int pw, int sw, int rw, int Wq, int *j0, int *j1) {
    int a = pw - rw > 0 ? (pw - rw + sw - 1) / sw : 0;
    int b = W + pw - rw > 0 ? (W + pw - rw + sw - 1) / sw : 0;
    if (b > Wq) b = Wq;
    if (a > b) a = b;
    *j0 = a;
    *j1 = b;
}

#if defined(__AVX512F__)
/* Lanes [lo, hi) of a 16-lane mask, both clipped to [0, 16]. */
static inline __mmask16 sc_lane_range(int lo, int hi) {
    lo = lo < 0 ? 0 : lo > 16 ? 16 : lo;
    hi = hi < 0 ? 0 : hi > 16 ? 16 : hi;
    return hi <= lo ? 0 : (__mmask16)((((uint32_t)1 << hi) - 1) & ~(((uint32_t)1 << lo) - 1));
}

static inline void sc_fill_row1(float *__restrict d, const float *__restrict src, int W, int pw, int Wq) {
    for (int j = 0; j < Wq; j += 16) {
        /* lanes l with pw <= j + l < pw + W hold src[j + l - pw]; the others are zero */
        const __m512 v = _mm512_maskz_loadu_ps(sc_lane_range(pw - j, pw + W - j), src + (j - pw));
        _mm512_mask_storeu_ps(d + j, sc_lane_range(0, Wq - j), v);
    }
}

/* Strides 2 and 4: 16*sw source floats loaded once (zero outside [0, W)) give 16 columns of every
 * phase, by one two-source permute per phase (stride 2) or two and a 256-bit block shuffle (stride 4). */
static void sc_fill_rows_permuted(float *dst0, int64_t phase_stride, const float *src, int W, int pw, int sw,
                                  int Wq) {
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    for (int j = 0; j < Wq; j += 16) {
        const int s0 = j * sw - pw;
        const __mmask16 store = sc_lane_range(0, Wq - j);
        __m512 v[4];
        for (int k = 0; k < sw; ++k)
            v[k] = _mm512_maskz_loadu_ps(sc_lane_range(-(s0 + 16 * k), W - (s0 + 16 * k)), src + s0 + 16 * k);
        for (int rw = 0; rw < sw; ++rw) {
            const __m512i index = _mm512_add_epi32(_mm512_mullo_epi32(lane, _mm512_set1_epi32(sw)),
                                                   _mm512_set1_epi32(rw));
            __m512 r;
            if (sw == 2) {
                r = _mm512_permutex2var_ps(v[0], index, v[1]);
            } else {   /* lanes 0-7 of each permute hold 8 columns from 32 floats */
                const __m512 a = _mm512_permutex2var_ps(v[0], index, v[1]);
                const __m512 b = _mm512_permutex2var_ps(v[2], index, v[3]);
                r = _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0));
            }
            _mm512_mask_storeu_ps(dst0 + rw * phase_stride + j, store, r);
        }
    }
}

static void sc_fill_rows(float *dst0, int64_t phase_stride, const float *src, int W, int pw, int sw, int Wq) {
    if (sw == 2 || sw == 4) {
        sc_fill_rows_permuted(dst0, phase_stride, src, W, pw, sw, Wq);
        return;
    }
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i step = _mm512_mullo_epi32(lane, _mm512_set1_epi32(sw));
    for (int rw = 0; rw < sw; ++rw) {
        /* columns j0 <= j < j1 (those with 0 <= j*sw + rw - pw < W) read sp[(j - j0)*sw] */
        float *d = dst0 + rw * phase_stride;
        int j0, j1;
        sc_phase_columns(W, pw, sw, rw, Wq, &j0, &j1);
        const float *sp = src + (int64_t)j0 * sw + rw - pw;
        for (int j = 0; j < Wq; j += 16) {
            const __m512i index = _mm512_add_epi32(step, _mm512_set1_epi32((j - j0) * sw));
            const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), sc_lane_range(j0 - j, j1 - j), index,
                                                      sp, 4);
            _mm512_mask_storeu_ps(d + j, sc_lane_range(0, Wq - j), v);
        }
    }
}
#else
__attribute__((optimize("no-tree-loop-distribute-patterns"))) static inline void sc_fill_row1(
    float *__restrict d, const float *__restrict src, int W, int pw, int Wq) {
    const int j0 = pw < Wq ? pw : Wq;
    const int j1 = W + pw < Wq ? W + pw : Wq;
    for (int j = 0; j < j0; ++j) d[j] = 0.0f;
    for (int j = j0; j < j1; ++j) d[j] = src[j - pw];
    for (int j = j1; j < Wq; ++j) d[j] = 0.0f;
}

__attribute__((optimize("no-tree-loop-distribute-patterns", "no-tree-vectorize"))) static void
sc_fill_rows(float *dst0, int64_t phase_stride, const float *src, int W, int pw, int sw, int Wq) {
    for (int rw = 0; rw < sw; ++rw) {
        /* columns j with 0 <= j*sw + rw - pw < W */
        float *__restrict d = dst0 + rw * phase_stride;
        int j0, j1;
        sc_phase_columns(W, pw, sw, rw, Wq, &j0, &j1);
        const float *__restrict sp = src + (int64_t)j0 * sw + rw - pw;
        for (int j = 0; j < j0; ++j) d[j] = 0.0f;
        for (int j = j0; j < j1; ++j) d[j] = sp[(int64_t)(j - j0) * sw];
        for (int j = j1; j < Wq; ++j) d[j] = 0.0f;
    }
}
#endif

static inline void sc_fill_row(float *dst0, int64_t phase_stride, const float *src, int W, int pw,
                               int sw, int Wq) {
    if (sw == 1)
        sc_fill_row1(dst0, src, W, pw, Wq);
    else
        sc_fill_rows(dst0, phase_stride, src, W, pw, sw, Wq);
}

/* What to prepare: N images x (N, C, H, W), padding, stride, and the prepared layout (rows Hq,
 * pitch Wq, floats per image or per 16-image group). Spatial layout only: each channel is followed
 * by copies - 1 shifted copies of itself, copy k holding the channel's phase planes moved down by
 * shift[k] floats (shift[0] = 0), so that with a pitch and planes of whole vectors every nonzero's
 * loads can start on a 64-byte boundary: a tap whose column offset is r (mod 16) reads copy r's
 * words, r floats earlier (see pyskim.kernels.sparse). Loads split across two cache lines cost two
 * L1 accesses on Intel cores; aligned they cost one. */
typedef struct {
    const float *x;
    int N, C, H, W, ph, pw, sh, sw, Hq, Wq;
    int64_t img_stride;
    int copies;
    int shift[SC_VL];
} sc_prep_t;

/* Image n's channel c into its S = sh*sw stride-phase planes at dst, `plane` floats apart (see the
 * header comment). */
static inline void sc_prepare_channel(const sc_prep_t *pp, int64_t n, int c, float *dst,
                                      int64_t plane) {
    const int H = pp->H, W = pp->W, ph = pp->ph, pw = pp->pw;
    const int sh = pp->sh, sw = pp->sw, Hq = pp->Hq, Wq = pp->Wq;
    const float *src = pp->x + (n * pp->C + c) * (int64_t)H * W;
    for (int rh = 0; rh < sh; ++rh) {
        float *phase = dst + rh * sw * plane;
        for (int i = 0; i < Hq; ++i) {
            const int r = i * sh + rh - ph;
            if (r < 0 || r >= H) {
                for (int rw = 0; rw < sw; ++rw)
                    memset(phase + rw * plane + (int64_t)i * Wq, 0, sizeof(float) * Wq);
                continue;
            }
            sc_fill_row(phase + (int64_t)i * Wq, plane, src + (int64_t)r * W, W, pw, sw, Wq);
        }
    }
}

/* ---- batch-interleaved layout -------------------------------------------------------------------
 * For batches of >= ~12 images, groups of SC_VL images are interleaved: position (channel-phase
 * plane, i, j) of the prepared buffer holds SC_VL floats, one per image, so a nonzero's column
 * offset scales by SC_VL, every load is aligned and every lane is useful. A tile is a run of up to
 * `tile` output positions (one vector each): a chunk of one output row when rows are long, else
 * whole rows including the Wq - OW thrown-away positions between them. */

#include "sconv_lanes.h"

/* Channel c of image group q into its S phase planes at dst, `plane` floats apart: image l of the
 * group in lane l, lanes past the last image zero. */
static inline void sc_prepare_il_channel(const sc_prep_t *pp, int q, int c, float *dst,
                                         int64_t plane) {
    const int H = pp->H, sh = pp->sh, sw = pp->sw, Hq = pp->Hq, Wq = pp->Wq;
    const int lanes = pp->N - q * SC_VL < SC_VL ? pp->N - q * SC_VL : SC_VL;
    const int64_t src_stride = (int64_t)pp->C * H * pp->W;
    const float *src = pp->x + ((int64_t)q * SC_VL * pp->C + c) * (int64_t)H * pp->W;
    const sc_lane_perm_t pm = sc_lane_perms();
    for (int rh = 0; rh < sh; ++rh) {
        float *phase = dst + rh * sw * plane;
        for (int i = 0; i < Hq; ++i) {
            const int r = i * sh + rh - pp->ph;
            float *d = phase + (int64_t)i * Wq * SC_VL;
            if (r < 0 || r >= H) {
                for (int rw = 0; rw < sw; ++rw) memset(d + rw * plane, 0, sizeof(float) * Wq * SC_VL);
                continue;
            }
            sc_il_fill_row(d, plane, src + (int64_t)r * pp->W, src_stride, lanes, pp->W, pp->pw, sw, Wq, &pm);
        }
    }
}

/* Channel c of image (or, interleaved, group of SC_VL images) n into its prepared copy at img
 * (pp->img_stride floats): the channel's S phase planes, then its shifted copies (spatial layout);
 * the tail after the channels is zeroed with the last channel. sc_prepare_jobs does jobs [j0, j1)
 * of a buffer of pp->N images or groups, job = (image or group) * C + channel. */
static void sc_prepare_job(const sc_prep_t *pp, int interleaved, int64_t n, int c, float *img) {
    const int C = pp->C, S = pp->sh * pp->sw, copies = interleaved ? 1 : pp->copies;
    const int64_t img_stride = pp->img_stride;
    const int64_t plane = (int64_t)pp->Hq * pp->Wq * (interleaved ? SC_VL : 1);
    const int64_t chan = S * plane;
    const int64_t used = (int64_t)C * copies * chan;
    float *dst = img + (int64_t)c * copies * chan;
    if (interleaved)
        sc_prepare_il_channel(pp, (int)n, c, dst, plane);
    else
        sc_prepare_channel(pp, n, c, dst, plane);
    for (int k = 1; k < copies; ++k) {
        const int64_t sh = pp->shift[k];
        memcpy(dst + k * chan, dst + sh, sizeof(float) * (chan - sh));
        memset(dst + k * chan + chan - sh, 0, sizeof(float) * sh);
    }
    if (c == C - 1 && img_stride > used) memset(img + used, 0, sizeof(float) * (img_stride - used));
}

static void sc_prepare_jobs(const sc_prep_t *pp, float *buf, int interleaved, int64_t j0, int64_t j1) {
    for (int64_t job = j0; job < j1; ++job) {
        const int64_t n = job / pp->C;
        sc_prepare_job(pp, interleaved, n, (int)(job % pp->C), buf + n * pp->img_stride);
    }
}

/* A register tile request clamped to [1, SC_TMAX] vectors. */
static inline int sc_clamp_tile(int tile) { return tile < 1 ? 1 : tile > SC_TMAX ? SC_TMAX : tile; }

/* Tiles of the interleaved variant: per-row chunks when OW*2 > tile, else runs of whole rows.
 * Returns the largest tile, in output positions (vectors). */
static int sc_il_tiles(int OH, int OW, int Wq, int tile, int64_t *ntile, int *chunk, int *rows) {
    tile = sc_clamp_tile(tile);
    if (OW * 2 > tile) {
        const int nch = (OW + tile - 1) / tile;
        *chunk = (OW + nch - 1) / nch;
        *rows = 0;
        *ntile = (int64_t)OH * nch;
    } else {
        int k = (tile - OW) / Wq + 1;
        if (k > OH) k = OH;
        const int64_t n = (OH + k - 1) / k;
        *rows = (int)((OH + n - 1) / n); /* balanced */
        *chunk = 0;
        *ntile = (OH + *rows - 1) / *rows;
    }
    return *rows ? (*rows - 1) * Wq + OW : *chunk;
}

static int sc_il_tile_max(int OH, int OW, int Wq, int tile) {
    int64_t ntile;
    int chunk, rows;
    return sc_il_tiles(OH, OW, Wq, tile, &ntile, &chunk, &rows);
}

/* ---- the convolution ----------------------------------------------------------------------------
 * One driver for both layouts: the input is prepared, then work items (image or 16-image group,
 * group, block of OCB output channels, tile) are shared out dynamically, one pool task each; each
 * worker accumulates an item's output channels in its scratch (sstride floats per channel) and
 * writes them out. A batch that shares out in whole images on the threads runs one task per image
 * instead, which prepares the image and runs its items block by block (sc_by_image). */

/* One convolution call: its arguments (see sc_conv) and its cut into work items. */
typedef struct {
    const sc_prep_t *prep; /* the input; prep->N images, prep->img_stride floats per image or group */
    float *buf;            /* its prepared copy */
    int64_t grp_stride;    /* prepared positions between groups of input channels */
    int G, OCg, NB;
    const int32_t *blk, *col;
    const float *val, *bias;
    int OH, OW, relu;
    float *out;
    int interleaved;
    int icb;               /* input channels per block */
    int by_image;          /* one task per image (sc_image_task) */
    int OCB, nocb;         /* output channels per item, items per group of them */
    int64_t ntile, items;  /* tiles per output plane, work items */
    int T;                 /* vectors per tile at most */
    int64_t sstride;       /* scratch floats per output channel */
    int64_t L, NV;         /* spatial: flat positions and vectors of an output plane */
    int chunk, rows, nchunk; /* interleaved: see sc_il_tiles; chunks per row */
    int64_t jobs, jchunk;  /* preparation jobs (image or group, channel), jobs per task */
    float **scratch;       /* per worker: OCB * sstride floats per item (by_image: per item it keeps
                              at once, sc_items_at_once), allocated on its first item */
    int failed;            /* a scratch could not be allocated */
} sc_conv_t;

/* Output channels [oc0, oc1) of group g on the tile whose input starts at `in`: the register tile
 * `fn` applies their nonzeros of input-channel block b (block 0 starts from the bias), channel oc
 * accumulating in scr + (oc - oc0) * sstride. */
static inline void sc_block(const sc_conv_t *cv, sc_tile_fn fn, const float *in, int g, int oc0, int oc1,
                            int b, float *scr) {
    const int64_t row0 = (int64_t)g * cv->OCg + oc0;
    fn(in, cv->col, cv->val, cv->blk + row0 * (cv->NB + 1) + b, cv->NB + 1, oc1 - oc0, b == 0,
       cv->bias ? cv->bias + row0 : NULL, scr, cv->sstride);
}

/* sc_block over every input-channel block in turn. */
static inline void sc_sweep(const sc_conv_t *cv, sc_tile_fn fn, const float *in, int g, int oc0,
                            int oc1, float *scr) {
    for (int b = 0; b < cv->NB; ++b) sc_block(cv, fn, in, g, oc0, oc1, b, scr);
}

/* dst[x] = src[x] for x < n, or Caffe's ReLU of it (src[x] < 0 ? 0 : src[x]: NaN and -0 kept): a
 * finished tile's row into the output. Rows are short (7-55 floats), so with AVX-512 they go 16 at
 * a time with a masked last vector: the compiler's loop (a vectorised head, a scalar tail) made
 * AlexNet's conv3 and conv5 at batch 16 1.13x and 1.22x slower. */
static inline void sc_write_row(float *__restrict dst, const float *__restrict src, int64_t n, int relu) {
#if defined(__AVX512F__)
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t x = 0; x < n; x += 16) {
        const __mmask16 m = n - x >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - x)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(m, src + x);
        if (relu) v = _mm512_max_ps(zero, v); /* (0 > v) ? 0 : v, v itself when it is NaN */
        _mm512_mask_storeu_ps(dst + x, m, v);
    }
#else
    if (relu) {
        for (int64_t x = 0; x < n; ++x) dst[x] = src[x] < 0.0f ? 0.0f : src[x];
    } else {
        for (int64_t x = 0; x < n; ++x) dst[x] = src[x];
    }
#endif
}

/* Where work item `it` of the spatial layout (tiles innermost) is: image n, group g, output
 * channels [oc0, oc1), flat output positions [p0, p1) in tv vectors. */
typedef struct {
    int64_t n, p0, p1;
    int g, oc0, oc1, tv;
} sc_item_t;

static inline sc_item_t sc_spatial_at(const sc_conv_t *cv, int64_t it) {
    sc_item_t m;
    const int64_t tl = it % cv->ntile;
    int64_t r = it / cv->ntile;
    const int ocb = (int)(r % cv->nocb);
    r /= cv->nocb;
    m.g = (int)(r % cv->G);
    m.n = r / cv->G;
    const int64_t v0 = tl * cv->T;
    m.tv = (int)(cv->NV - v0 < cv->T ? cv->NV - v0 : cv->T);
    m.p0 = v0 * SC_VL;
    m.p1 = m.p0 + (int64_t)m.tv * SC_VL < cv->L ? m.p0 + (int64_t)m.tv * SC_VL : cv->L;
    m.oc0 = ocb * cv->OCB;
    m.oc1 = m.oc0 + cv->OCB < cv->OCg ? m.oc0 + cv->OCB : cv->OCg;
    return m;
}

/* A finished spatial item from its scratch into the output, row by row without the thrown-away
 * positions (ReLU applied here). */
static inline void sc_spatial_write(const sc_conv_t *cv, const sc_item_t *m, const float *scr) {
    const int OW = cv->OW, Wq = cv->prep->Wq, relu = cv->relu;
    const int64_t y0 = m->p0 / Wq, y1 = (m->p1 - 1) / Wq;
    const int64_t plane = (int64_t)cv->OH * OW;
    for (int oc = m->oc0; oc < m->oc1; ++oc) {
        const float *s = scr + (oc - m->oc0) * cv->sstride;
        float *o = cv->out + (m->n * cv->G * cv->OCg + (int64_t)m->g * cv->OCg + oc) * plane;
        for (int64_t y = y0; y <= y1; ++y) {
            const int64_t rs = y * Wq;
            const int64_t xa = m->p0 > rs ? m->p0 - rs : 0;
            const int64_t xb = m->p1 - rs < OW ? m->p1 - rs : OW;
            sc_write_row(o + y * OW + xa, s + rs - m->p0 + xa, xb - xa, relu);
        }
    }
}

/* Work item `it` of the spatial layout: a tile of the flat output positions of one image, swept
 * over every input-channel block, then written out. The image's prepared input is at img, or
 * (NULL) at its place in cv->buf. */
static inline void sc_spatial_item(const sc_conv_t *cv, int64_t it, const float *img, float *scr) {
    const sc_item_t m = sc_spatial_at(cv, it);
    if (!img) img = cv->buf + m.n * cv->prep->img_stride;
    sc_sweep(cv, sc_tiles[m.tv], img + m.g * cv->grp_stride + m.p0, m.g, m.oc0, m.oc1, scr);
    sc_spatial_write(cv, &m, scr);
}

/* Work item `it` of the interleaved layout (output-channel blocks innermost: one tile's slice of
 * the 16-image input, all channels, stays in L2 while every block of output channels sweeps it):
 * a tile of output positions of 16 images, each lane written to its image. */
static inline void sc_interleaved_item(const sc_conv_t *cv, int64_t it, float *scr) {
    const int OCg = cv->OCg, OH = cv->OH, OW = cv->OW, Wq = cv->prep->Wq, relu = cv->relu;
    const int ocb = (int)(it % cv->nocb);
    int64_t r = it / cv->nocb;
    const int64_t tl = r % cv->ntile;
    r /= cv->ntile;
    const int g = (int)(r % cv->G);
    const int q = (int)(r / cv->G);
    const int nimg = cv->prep->N;
    const int lanes = nimg - q * SC_VL < SC_VL ? nimg - q * SC_VL : SC_VL;
    int y0, x0, cnt;
    if (cv->rows) {
        y0 = (int)tl * cv->rows;
        const int y1 = y0 + cv->rows < OH ? y0 + cv->rows : OH;
        x0 = 0;
        cnt = (y1 - y0 - 1) * Wq + OW;
    } else {
        y0 = (int)(tl / cv->nchunk);
        x0 = (int)(tl % cv->nchunk) * cv->chunk;
        cnt = OW - x0 < cv->chunk ? OW - x0 : cv->chunk;
    }
    const int64_t p0 = (int64_t)y0 * Wq + x0;
    const int oc0 = ocb * cv->OCB;
    const int oc1 = oc0 + cv->OCB < OCg ? oc0 + cv->OCB : OCg;
    sc_sweep(cv, sc_itiles[cnt], cv->buf + q * cv->prep->img_stride + (g * cv->grp_stride + p0) * SC_VL,
             g, oc0, oc1, scr);
    const int64_t plane = (int64_t)OH * OW;
    const int64_t OC = (int64_t)cv->G * OCg;
    const sc_lane_perm_t pm = sc_lane_perms();
    for (int oc = oc0; oc < oc1; ++oc)
        sc_il_write_tile(scr + (oc - oc0) * cv->sstride, cnt, lanes,
                         cv->out + ((int64_t)q * SC_VL * OC + (int64_t)g * OCg + oc) * plane, OC * plane, y0, x0, OW,
                         Wq, relu, &pm);
}

/* The cut of a convolution into work items: output-channel blocks, tiles (at most `tile` vectors;
 * spatial tiles balanced), items and scratch. */
static void sc_plan_items(sc_conv_t *cv, int tile) {
    const int OH = cv->OH, OW = cv->OW, Wq = cv->prep->Wq;
    int64_t images = cv->prep->N;
    if (cv->interleaved) {
        cv->T = sc_il_tiles(OH, OW, Wq, tile, &cv->ntile, &cv->chunk, &cv->rows);
        cv->nchunk = cv->chunk ? (OW + cv->chunk - 1) / cv->chunk : 1;
        images = (images + SC_VL - 1) / SC_VL;
    } else {
        cv->L = (int64_t)(OH - 1) * Wq + OW;
        cv->NV = sc_num_vectors(OH, OW, Wq);
        tile = sc_clamp_tile(tile);
        cv->ntile = (cv->NV + tile - 1) / tile;
        cv->T = (int)((cv->NV + cv->ntile - 1) / cv->ntile); /* balanced tiles of <= tile vectors */
    }
    cv->OCB = cv->OCB < 1 ? 1 : cv->OCB > cv->OCg ? cv->OCg : cv->OCB;
    cv->nocb = (cv->OCg + cv->OCB - 1) / cv->OCB;
    cv->items = images * cv->G * cv->nocb * cv->ntile;
    cv->sstride = (int64_t)cv->T * SC_VL;
}

/* Pool task: preparation jobs [task*jchunk, (task+1)*jchunk). */
static void sc_prepare_task(void *ctx, int64_t task, int worker) {
    const sc_conv_t *cv = (const sc_conv_t *)ctx;
    const int64_t j1 = (task + 1) * cv->jchunk;
    (void)worker;
    sc_prepare_jobs(cv->prep, cv->buf, cv->interleaved, task * cv->jchunk, j1 < cv->jobs ? j1 : cv->jobs);
}

/* Accumulators one worker keeps while it runs an image block by block (sc_image_task): half the L2
 * of the project machine's cores. */
#define SC_IMAGE_SCRATCH_BYTES (1 << 20)

/* Work items of one image whose accumulators a worker keeps at once (at least one). */
static int64_t sc_items_at_once(const sc_conv_t *cv) {
    const int64_t per_image = cv->items / cv->prep->N;
    const int64_t fit = SC_IMAGE_SCRATCH_BYTES / ((int64_t)sizeof(float) * cv->sstride * cv->OCB);
    return fit < 1 ? 1 : fit < per_image ? fit : per_image;
}

/* The worker's scratch, allocated on its first item; NULL (and the call failed) if it cannot be. */
static float *sc_scratch(sc_conv_t *cv, int worker) {
    float **scr = cv->scratch + worker;
    const int64_t items = cv->by_image ? sc_items_at_once(cv) : 1;
    if (!*scr) *scr = (float *)aligned_alloc(64, sizeof(float) * cv->sstride * cv->OCB * items);
    if (!*scr) __atomic_store_n(&cv->failed, 1, __ATOMIC_RELAXED);
    return *scr;
}

/* Pool task: work item `it` in the worker's scratch (an item without scratch is skipped). */
static void sc_item_task(void *ctx, int64_t it, int worker) {
    sc_conv_t *cv = (sc_conv_t *)ctx;
    float *scr = sc_scratch(cv, worker);
    if (!scr)
        return;
    else if (cv->interleaved)
        sc_interleaved_item(cv, it, scr);
    else
        sc_spatial_item(cv, it, NULL, scr);
}

/* Pool task of a batch run image by image (spatial layout; sc_by_image): the worker prepares image
 * n in its own slot of the buffer one input-channel block at a time: block b of every group is
 * prepared, then every item of the image applies its nonzeros of block b, each item accumulating
 * in its own part of the worker's scratch; after the last block the items are written out. One
 * block of the prepared input is in use at a time and stays in the core's own caches, where the
 * other order (all of an item's blocks, then the next item) reads the whole prepared image again
 * for each item. On two threads of the 2-core Xeon at batch 16 and density 0.1, AlexNet's conv3-5
 * and their group-1 versions ran 1.07-1.22x faster this way, with the aligned plans that had lost
 * to plain ones read item by item (input prepared with three shifted copies: 0.7 MiB an image);
 * conv1 (stride 4, 0.6 MiB prepared: it had run in passes) 1.26x; conv2 unchanged. An image whose
 * accumulators exceed SC_IMAGE_SCRATCH_BYTES (large outputs) runs its items in runs that fit, each
 * run over every block; the first run prepares the blocks. */
static void sc_image_task(void *ctx, int64_t n, int worker) {
    sc_conv_t *cv = (sc_conv_t *)ctx;
    float *scr = sc_scratch(cv, worker);
    if (!scr) return;
    float *img = cv->buf + (int64_t)worker * cv->prep->img_stride;
    const int Cg = cv->prep->C / cv->G;
    const int64_t per_image = cv->items / cv->prep->N, at_once = sc_items_at_once(cv);
    const int64_t item_floats = cv->sstride * cv->OCB;
    for (int64_t i0 = 0; i0 < per_image; i0 += at_once) {
        const int64_t i1 = i0 + at_once < per_image ? i0 + at_once : per_image;
        for (int b = 0; b < cv->NB; ++b) {
            if (i0 == 0) {
                /* block b's channels [c0, c1) and the next block's first: the flat reads of a
                 * channel's last rows reach the next channel's left zero columns (one-sided
                 * padding), so it is prepared one block early */
                const int c0 = b * cv->icb, c1 = c0 + cv->icb < Cg ? c0 + cv->icb : Cg;
                const int first = b == 0 ? c0 : c0 + 1, last = c1 < Cg ? c1 + 1 : c1;
                for (int g = 0; g < cv->G; ++g)
                    for (int c = first; c < last; ++c) sc_prepare_job(cv->prep, 0, n, g * Cg + c, img);
            }
            for (int64_t i = i0; i < i1; ++i) {
                const sc_item_t m = sc_spatial_at(cv, n * per_image + i);
                float *s = scr + (i - i0) * item_floats;
                sc_block(cv, sc_tiles[m.tv], img + m.g * cv->grp_stride + m.p0, m.g, m.oc0, m.oc1, b, s);
                if (b == cv->NB - 1) sc_spatial_write(cv, &m, s);
            }
        }
    }
}

/* Prepared input the spatial variant keeps for one pass: a batch is prepared and convolved in runs
 * of as many images as fit (at least one), so that the prepared copies are still in L2 when the
 * register tiles read them (preparing a whole batch first sends them to L3 and back). */
#define SC_PASS_BYTES (1 << 20)
/* A batch of at least this many images per thread that shares out in whole images within 10% of
 * evenly runs image by image (sc_image_task), one slot of the buffer per thread. In passes the
 * threads share each image's items, and each core reads the whole image, prepared partly by the
 * other: image by image, AlexNet's conv2-5 at SkimCaffe's densities ran 7-12% faster at batch 16 on
 * two threads of a 2-core Xeon, 7-15% at batch 8; at batch 4-5 (a thread idle at the end, the
 * preparation not shared) up to 15% slower. */
#define SC_IMAGE_TASKS_MIN 4

/* Whether the spatial variant runs a batch of N images on nthreads threads image by image (on one
 * thread, in passes: image by image was no faster, conv1-2 at batch 16 2-4% slower). */
static int sc_by_image(int64_t N, int nthreads) {
    const int64_t even = (N + nthreads - 1) / nthreads * nthreads; /* images if shared evenly */
    return nthreads > 1 && N >= (int64_t)SC_IMAGE_TASKS_MIN * nthreads && even * 10 <= N * 11;
}

/* The convolution of prep->N images, prepared as *prep says (interleaved: in groups of 16) into
 * buf, on up to nthreads threads. blk has (G*OCg) rows of NB+1 pointers into col/val: row r's
 * nonzeros of input-channel block b are [blk[r*(NB+1)+b], blk[r*(NB+1)+b+1]). The spatial variant
 * runs image by image with one image's slot of buf per thread (sc_by_image), else in passes of
 * SC_PASS_BYTES of prepared input (buf needs one pass). Returns 0, or -1 when a worker's scratch
 * could not be allocated. */
static int sc_conv(const sc_prep_t *prep, float *buf, int64_t grp_stride, int G, int OCg, int NB,
                   const int32_t *blk, const int32_t *col, const float *val, const float *bias, int OH,
                   int OW, int tile, int OCB, int relu, int interleaved, int icb, float *out,
                   int nthreads) {
    sc_prep_t pass = *prep;
    sc_conv_t cv = {.prep = &pass, .buf = buf, .grp_stride = grp_stride, .G = G, .OCg = OCg, .NB = NB,
                    .blk = blk, .col = col, .val = val, .bias = bias, .OH = OH, .OW = OW, .relu = relu,
                    .out = out, .interleaved = interleaved, .OCB = OCB, .icb = icb,
                    .by_image = !interleaved && sc_by_image(prep->N, nthreads)};
    int64_t per_pass = prep->N;
    if (!interleaved) {
        per_pass = SC_PASS_BYTES / (prep->img_stride * (int64_t)sizeof(float));
        if (per_pass < 1) per_pass = 1;
    }
    cv.scratch = (float **)calloc(nthreads, sizeof(float *));
    if (!cv.scratch) return -1;
    const int64_t x_img = (int64_t)prep->C * prep->H * prep->W;
    const int64_t out_img = (int64_t)G * OCg * OH * OW;
    if (cv.by_image) {
        sc_plan_items(&cv, tile);
        pk_parallel_for(prep->N, sc_image_task, &cv, nthreads);
    }
    for (int64_t n0 = 0; n0 < prep->N && !cv.by_image && !cv.failed; n0 += per_pass) {
        pass.x = prep->x + n0 * x_img;
        pass.N = (int)(prep->N - n0 < per_pass ? prep->N - n0 : per_pass);
        cv.out = out + n0 * out_img;
        sc_plan_items(&cv, tile);
        cv.jobs = (interleaved ? (pass.N + SC_VL - 1) / SC_VL : pass.N) * (int64_t)prep->C;
        cv.jchunk = pk_task_chunk(cv.jobs, nthreads);
        pk_parallel_for((cv.jobs + cv.jchunk - 1) / cv.jchunk, sc_prepare_task, &cv, nthreads);
        pk_parallel_for(cv.items, sc_item_task, &cv, nthreads);
    }
    for (int w = 0; w < nthreads; ++w) free(cv.scratch[w]);
    free(cv.scratch);
    return cv.failed ? -1 : 0;
}

#endif /* PYSKIM_SCONV_IMPL_H */
