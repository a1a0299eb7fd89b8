/* The shapes and types shared by pyskim's dense products (gemm_impl.h): the register tile (MR x NR
 * floats, vector width VL), the operand views and the product job. */
#ifndef PYSKIM_GEMM_DEFS_H
#define PYSKIM_GEMM_DEFS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__)
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
    int relu;                    /* C = max(C, 0) as the last K block stores it (Caffe's ReLU after the
                                    product: NaN stays NaN, -0.0 stays -0.0) */
    /* the plan */
    int64_t kc, mpanels, npanels, mcp, ncp, mchunks, nchunks;
    float *apack;
    int failed;
} gm_job_t;

#endif /* PYSKIM_GEMM_DEFS_H */
