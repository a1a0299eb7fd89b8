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
 * then added to C in order. Every element of C is the same sum in the same order whatever the
 * thread count or the cut into tasks, so results do not depend on the number of threads.
 *
 * gemm_defs.h holds the tile shapes, operand views and the job; gemm_im2col.h the implicit im2col
 * packing; gemm_dot.h the dot products of the inner product at batch 1-4. */
#ifndef PYSKIM_GEMM_IMPL_H
#define PYSKIM_GEMM_IMPL_H

#include "gemm_defs.h"
#include "gemm_dot.h"
#include "gemm_im2col.h"
#include "pool_api.h"

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

/* d[t0, t1) = [d +] src + b (b: one value, or bcol[t] per column when bcol is given), then
 * max(d, 0) with relu (as Caffe's ReLU: x < 0 ? 0 : x, so NaN and -0.0 pass). */
static inline void gm_store_run(float *__restrict d, const float *__restrict src, const float *bcol, float b,
                                int t0, int t1, int set, int relu) {
#if defined(__AVX512F__)
    const __m512 vb = _mm512_set1_ps(b), zero = _mm512_setzero_ps();
    for (int t = t0; t < t1; t += 16) {
        const __mmask16 m = (__mmask16)(t1 - t >= 16 ? 0xffff : (1u << (t1 - t)) - 1);
        __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, src + t),
                                 bcol ? _mm512_maskz_loadu_ps(m, bcol + t) : vb);
        if (!set) v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, d + t), v);
        if (relu) v = _mm512_max_ps(zero, v);   /* (0 > v) ? 0 : v, v itself when it is NaN */
        _mm512_mask_storeu_ps(d + t, m, v);
    }
#else
    for (int t = t0; t < t1; ++t) {
        float v = src[t] + (bcol ? bcol[t] : b);
        if (!set) v += d[t];
        d[t] = relu && v < 0.0f ? 0.0f : v;
    }
#endif
}

/* Rows [i0, i0 + mr) x the panel's columns of C (group g) from tile: the first K block sets them
 * (beta: adds to them) with the bias, later blocks add; the last one applies the ReLU (jb->relu). */
static void gm_store(const gm_job_t *jb, int g, int64_t i0, int mr, int64_t j0, const gm_runs_t *runs,
                     const float *__restrict tile, int first, int last) {
    const int set = first && !jb->beta, relu = last && jb->relu;
    const float *bcol = first && jb->bias && jb->bias_cols ? jb->bias + j0 : 0;
    for (int r = 0; r < mr; ++r) {
        float *row = jb->c + g * jb->c_gstride + (i0 + r) * jb->c_rs;
        const float rb = (first && jb->bias && !jb->bias_cols) ? jb->bias[g * jb->M + i0 + r] : 0.0f;
        for (int s = 0; s < runs->n; ++s)
            gm_store_run(row + runs->at[s], tile + r * GM_NR, bcol, rb, runs->t[s], runs->t[s + 1], set, relu);
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
                gm_store(jb, g, i0, mr, j0, &runs[jp - jp0], tile, p0 == 0, p0 + kb == jb->K);
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

#endif /* PYSKIM_GEMM_IMPL_H */
