/* Few rows times a transposed row-major matrix as dot products (the inner product at a small batch),
 * on pyskim's thread pool; used by gemm.pyx beside the blocked products of gemm_impl.h. */
#ifndef PYSKIM_GEMM_DOT_H
#define PYSKIM_GEMM_DOT_H

#include "gemm_defs.h"
#include "pool_api.h"

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

#endif /* PYSKIM_GEMM_DOT_H */
