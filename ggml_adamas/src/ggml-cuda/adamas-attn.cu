// GGML_OP_ADAMAS_ATTN on CUDA: softmax attention of one query over the cells of its index row, reading those K
// and V rows in place (F32, F16, BF16, Q8_0 or Q4_0, converted in registers). One block per index row and
// query: in GROUP mode the row serves up to NG query heads of a KV head, so each selected K/V row is read once
// for all of them. The slots are split over blocks (ADAMAS_ATTN_SLOTS each) so that even a few rows fill the
// GPU; in a block each warp takes every NWARP-th group of U slots (their K and V loads issued together) with an
// online softmax, and the warps merge in shared memory. With several splits a second kernel merges the splits'
// (max, sum, accumulator) partials.
//
// Rerank (ggml_adamas_attn_rerank, n_keep < budget): one block per index row and query scores the whole pool
// (its exact logits kept in shared memory), keeps the first n_lead slots and the n_keep - n_lead best of the
// others by a radix select on the logits' bits (ties: the earlier slot, as on the CPU), then attends over the
// kept slots from the same logits, so K is read once for the pool and V only for the kept cells.

#include "adamas-common.cuh"
#ifndef ADAMAS_CUDA_STANDALONE
#include "adamas-attn.cuh"
#include "ggml-adamas.h"
#endif

#define ADAMAS_ATTN_NWARP 8
#define ADAMAS_ATTN_U     4
#define ADAMAS_ATTN_SLOTS 64   // slots per block (one round of 2U per warp, two of U at D = 256)

enum adamas_kv_type { ADAMAS_KV_F32, ADAMAS_KV_F16, ADAMAS_KV_BF16, ADAMAS_KV_Q8_0, ADAMAS_KV_Q4_0 };

struct adamas_attn_args {
    const char * q;    int64_t qnb1, qnb2, qnb3;          // F32 [D, n_q, n_head, ns]
    const char * k;    int64_t knb1, knb2, knb3; int kt;  // [D, n_kv, n_head_kv, ns]
    const char * v;    int64_t vnb1, vnb2, vnb3; int vt;
    const char * mask; bool mask_f16; int64_t mnb1, mnb3, mne3;
    const char * idx;  int64_t inb1, inb2, inb3;          // I32 [budget, n_head or n_head_kv, n_q, ns]
    int     budget;
    bool    per_head;
    int64_t n_head, n_head_kv, n_gqa, n_q, ns, n_kv;
    int64_t n_hb;                                          // head blocks per KV head (GROUP)
    float   scale, softcap;
    int     n_split;                                       // blocks per index row
    int     n_keep, n_lead;                                // rerank (0 < n_keep < budget): see the header
    bool    rr_cluster;                                    // rerank in one cluster launch where it serves (sm_90+)
    bool    par_rank;                                      // the cluster rerank's rank loop, 8 loads a trip (adamas_par_rank_env)
    float * part;                                          // n_split > 1: [n_head*n_q*ns][n_split][D + 2]
    float * logits;                                        // rerank: [index row blocks*n_q*ns][NG][budget]
    float * dst;                                           // F32 [D, n_head, n_q, ns], contiguous
};

// E consecutive values [e0, e0 + E) of a row, as float (the CPU kernel converts the same way)
template <int E>
static __device__ __forceinline__ void adamas_load_row(const char * row, int type, int e0, float (&x)[E]) {
    switch (type) {
        case ADAMAS_KV_F32: {
#pragma unroll
            for (int i = 0; i < E; ++i) {
                x[i] = ((const float *) row)[e0 + i];
            }
        } break;
        case ADAMAS_KV_F16: {
            if constexpr (E % 2 == 0) {
#pragma unroll
                for (int i = 0; i < E; i += 2) {
                    const float2 f = __half22float2(((const half2 *) row)[(e0 + i)/2]);
                    x[i]     = f.x;
                    x[i + 1] = f.y;
                }
            } else {
#pragma unroll
                for (int i = 0; i < E; ++i) {
                    x[i] = __half2float(((const half *) row)[e0 + i]);
                }
            }
        } break;
        case ADAMAS_KV_BF16: {
#pragma unroll
            for (int i = 0; i < E; ++i) {
                x[i] = __uint_as_float((uint32_t) ((const uint16_t *) row)[e0 + i] << 16);
            }
        } break;
        case ADAMAS_KV_Q8_0: {
            // block of 32: f16 scale, 32 int8
            const char * b = row + (e0/32)*34;
            const float  d = __half2float(*(const half *) b);
#pragma unroll
            for (int i = 0; i < E; ++i) {
                x[i] = (float) ((const int8_t *) (b + 2))[e0 % 32 + i]*d;
            }
        } break;
        default: { // ADAMAS_KV_Q4_0: block of 32: f16 scale, 16 bytes (low nibbles: 0..15, high: 16..31)
            const char * b = row + (e0/32)*18;
            const float  d = __half2float(*(const half *) b);
            const uint8_t * qs = (const uint8_t *) (b + 2);
#pragma unroll
            for (int i = 0; i < E; ++i) {
                const int j = e0 % 32 + i;
                const int q = j < 16 ? (qs[j] & 0x0F) : (qs[j - 16] >> 4);
                x[i] = (float) (q - 8)*d;
            }
        } break;
    }
}

// the U slots [j0, j0 + U) of an index row (none past je: c = -1): cell indices, mask values and K rows (V rows too
// with LOAD_V), the loads of all U cells in flight at once
template <int E, int U, bool LOAD_V>
static __device__ __forceinline__ void adamas_load_slots(const adamas_attn_args & a, const int32_t * sel, const char * mrow,
        const char * kb, const char * vb, int j0, int je, int lane, int (&c)[U], float (&mv)[U], float (&kx)[U][E],
        float (&vx)[U][E]) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
        c[u] = j0 + u < je ? sel[j0 + u] : -1;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
        mv[u] = 0.0f;
        if (c[u] >= 0) {
            if (mrow) {
                mv[u] = a.mask_f16 ? __half2float(((const half *) mrow)[c[u]]) : ((const float *) mrow)[c[u]];
            }
            adamas_load_row<E>(kb + c[u]*a.knb1, a.kt, lane*E, kx[u]);
            if constexpr (LOAD_V) {
                adamas_load_row<E>(vb + c[u]*a.vnb1, a.vt, lane*E, vx[u]);
            }
        }
    }
}

// a rerank slot's exact logit, in the CPU's order of operations (scale, softcap, then the mask): the same in the
// score kernel and the cluster kernel, so both keep the same cells; -INF for an empty or masked slot
template <int E>
static __device__ __forceinline__ float adamas_rr_logit(const float (&q)[E], const float (&kx)[E], float qk_scale,
        float softcap, int c, float mv) {
    float p = 0.0f;
#pragma unroll
    for (int i = 0; i < E; ++i) {
        p += q[i]*kx[i];
    }
#pragma unroll
    for (int o = WARP_SIZE/2; o > 0; o >>= 1) {
        p += __shfl_xor_sync(0xFFFFFFFF, p, o);
    }
    p = __fmul_rn(p, qk_scale);
    if (softcap != 0.0f) {
        p = __fmul_rn(softcap, tanhf(p));
    }
    return c >= 0 && mv != -INFINITY ? __fadd_rn(p, mv) : -INFINITY;
}

template <int D, int NG>
static __global__ void __launch_bounds__(ADAMAS_ATTN_NWARP*WARP_SIZE)
adamas_attn_kernel(const adamas_attn_args a) {
    constexpr int E = D/WARP_SIZE;
    constexpr int U = D <= 128 ? 2*ADAMAS_ATTN_U : ADAMAS_ATTN_U; // one round of the block's slots where registers allow

    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int64_t iq    = blockIdx.z % a.n_q;
    const int64_t is    = blockIdx.z / a.n_q;
    const int     split = blockIdx.y;
    const int     jb    = split*ADAMAS_ATTN_SLOTS;            // this block's slots: [jb, je)
    const int     je    = min(a.budget, jb + ADAMAS_ATTN_SLOTS);

    int64_t kvh, h0, irow;
    int ng;
    if (a.per_head) {
        h0   = blockIdx.x;
        kvh  = h0 / a.n_gqa;
        irow = h0;
        ng   = 1;
    } else {
        kvh  = blockIdx.x / a.n_hb;
        h0   = kvh*a.n_gqa + (blockIdx.x % a.n_hb)*NG;
        irow = kvh;
        ng   = (int) min((int64_t) NG, kvh*a.n_gqa + a.n_gqa - h0);
    }

    const int32_t * sel  = (const int32_t *) (a.idx + irow*a.inb1 + iq*a.inb2 + is*a.inb3);
    const char *    mrow = a.mask ? a.mask + iq*a.mnb1 + (is % a.mne3)*a.mnb3 : nullptr;
    const char *    kb   = a.k + kvh*a.knb2 + is*a.knb3;
    const char *    vb   = a.v + kvh*a.vnb2 + is*a.vnb3;

    // softcap folds into the scale as in the CPU kernel: softcap*tanh(s*scale/softcap)
    const float qk_scale = a.softcap != 0.0f ? a.scale/a.softcap : a.scale;

    float q[NG][E];
#pragma unroll
    for (int hh = 0; hh < NG; ++hh) {
#pragma unroll
        for (int i = 0; i < E; ++i) {
            q[hh][i] = hh < ng ? ((const float *) (a.q + iq*a.qnb1 + (h0 + hh)*a.qnb2 + is*a.qnb3))[lane*E + i] : 0.0f;
        }
    }

    float m[NG], s[NG], acc[NG][E];
#pragma unroll
    for (int hh = 0; hh < NG; ++hh) {
        m[hh] = -INFINITY;
        s[hh] = 0.0f;
#pragma unroll
        for (int i = 0; i < E; ++i) {
            acc[hh][i] = 0.0f;
        }
    }

    for (int j0 = jb + warp*U; j0 < je; j0 += ADAMAS_ATTN_NWARP*U) {
        int   c[U];
        float mv[U];
        float kx[U][E], vx[U][E];
        adamas_load_slots<E, U, true>(a, sel, mrow, kb, vb, j0, je, lane, c, mv, kx, vx);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (mv[u] == -INFINITY) {
                c[u] = -1;
            }
        }
#pragma unroll
        for (int hh = 0; hh < NG; ++hh) {
            if (hh >= ng) {
                break;
            }
            float l[U];
            float lmax = -INFINITY;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                float p = 0.0f;
#pragma unroll
                for (int i = 0; i < E; ++i) {
                    p += q[hh][i]*kx[u][i];
                }
#pragma unroll
                for (int o = WARP_SIZE/2; o > 0; o >>= 1) {
                    p += __shfl_xor_sync(0xFFFFFFFF, p, o);
                }
                p *= qk_scale;
                if (a.softcap != 0.0f) {
                    p = a.softcap*tanhf(p);
                }
                l[u] = c[u] >= 0 ? p + mv[u] : -INFINITY;
                lmax = fmaxf(lmax, l[u]);
            }
            if (lmax == -INFINITY) {
                continue;
            }
            const float mn    = fmaxf(m[hh], lmax);
            const float alpha = m[hh] == -INFINITY ? 0.0f : expf(m[hh] - mn);
            s[hh] *= alpha;
#pragma unroll
            for (int i = 0; i < E; ++i) {
                acc[hh][i] *= alpha;
            }
#pragma unroll
            for (int u = 0; u < U; ++u) {
                if (l[u] == -INFINITY) {
                    continue;
                }
                const float p = expf(l[u] - mn);
                s[hh] += p;
#pragma unroll
                for (int i = 0; i < E; ++i) {
                    acc[hh][i] += p*vx[u][i];
                }
            }
            m[hh] = mn;
        }
    }

    // merge the warps
    extern __shared__ float sm[];
    float * sm_m   = sm;                                 // [NWARP][NG]
    float * sm_s   = sm_m + ADAMAS_ATTN_NWARP*NG;        // [NWARP][NG]
    float * sm_acc = sm_s + ADAMAS_ATTN_NWARP*NG;        // [NWARP][NG][D]
#pragma unroll
    for (int hh = 0; hh < NG; ++hh) {
        if (lane == 0) {
            sm_m[warp*NG + hh] = m[hh];
            sm_s[warp*NG + hh] = s[hh];
        }
#pragma unroll
        for (int i = 0; i < E; ++i) {
            sm_acc[(warp*NG + hh)*D + lane*E + i] = acc[hh][i];
        }
    }
    __syncthreads();

    for (int t = threadIdx.x; t < ng*D; t += blockDim.x) {
        const int hh = t / D;
        const int d  = t % D;
        float M = -INFINITY;
        for (int w = 0; w < ADAMAS_ATTN_NWARP; ++w) {
            M = fmaxf(M, sm_m[w*NG + hh]);
        }
        float o = 0.0f;
        float S = 0.0f;
        if (M != -INFINITY) {
            for (int w = 0; w < ADAMAS_ATTN_NWARP; ++w) {
                const float mw = sm_m[w*NG + hh];
                if (mw == -INFINITY) {
                    continue;
                }
                const float f = expf(mw - M);
                S += f*sm_s[w*NG + hh];
                o += f*sm_acc[(w*NG + hh)*D + d];
            }
        }
        const int64_t hq = (h0 + hh) + a.n_head*(iq + a.n_q*is);
        if (a.n_split == 1) {
            a.dst[d + D*hq] = M == -INFINITY ? 0.0f : o/S;
        } else {
            float * p = a.part + (hq*a.n_split + split)*(D + 2);
            if (d == 0) {
                p[0] = M;
                p[1] = S;
            }
            p[2 + d] = o;
        }
    }
}

#define ADAMAS_RR_NWARP 16 // warps of a rerank block: the pool's K rows in flight at once

// orderable key of a logit: a larger float has a larger key; -0 as +0 (equal as floats, so they tie)
static __device__ __forceinline__ uint32_t adamas_rr_key(float f) {
    const uint32_t u = __float_as_uint(f == 0.0f ? 0.0f : f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// exclusive prefix sum of v over the block's threads in order; *total: the block's sum. sm: NWARP ints.
template <int NWARP>
static __device__ __forceinline__ int adamas_block_scan(int v, int * sm, int * total) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    int x = v;
#pragma unroll
    for (int o = 1; o < WARP_SIZE; o <<= 1) {
        const int y = __shfl_up_sync(0xFFFFFFFF, x, o);
        x += lane >= o ? y : 0;
    }
    if (lane == WARP_SIZE - 1) {
        sm[warp] = x;
    }
    __syncthreads();
    if (warp == 0) {
        int w = lane < NWARP ? sm[lane] : 0;
#pragma unroll
        for (int o = 1; o < WARP_SIZE; o <<= 1) {
            const int y = __shfl_up_sync(0xFFFFFFFF, w, o);
            w += lane >= o ? y : 0;
        }
        if (lane < NWARP) {
            sm[lane] = w; // inclusive
        }
    }
    __syncthreads();
    const int base = warp > 0 ? sm[warp - 1] : 0;
    *total = sm[NWARP - 1];
    __syncthreads(); // sm is free again
    return base + x - v;
}

// max of v over the block. sm: NWARP floats.
template <int NWARP>
static __device__ __forceinline__ float adamas_block_max(float v, float * sm) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
#pragma unroll
    for (int o = WARP_SIZE/2; o > 0; o >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFF, v, o));
    }
    if (lane == 0) {
        sm[warp] = v;
    }
    __syncthreads();
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < NWARP; ++w) {
        m = fmaxf(m, sm[w]);
    }
    __syncthreads();
    return m;
}

// shared memory of a rerank block: the logits [NG][pool] and the kept slots' list, later reused by the warps'
// accumulators, then the small arrays
static size_t adamas_attn_rerank_smem(int D, int ng, int pool) {
    const size_t a = (size_t) ng*pool*sizeof(float) + (size_t) pool*sizeof(int);
    const size_t b = (size_t) ADAMAS_RR_NWARP*ng*D*sizeof(float);
    return std::max(a, b) + (size_t) ADAMAS_RR_NWARP*ng*sizeof(float) + ng*sizeof(float) + 256*sizeof(int) +
           (ADAMAS_RR_NWARP + 2)*sizeof(int) + ADAMAS_RR_NWARP*sizeof(float);
}

// Rerank, first kernel: the exact logits of a pool, ADAMAS_ATTN_SLOTS slots per block (many blocks per index row,
// so that the K rows of every row are in flight at once), into a.logits [index row, query][NG][pool].
template <int D, int NG>
static __global__ void __launch_bounds__(ADAMAS_ATTN_NWARP*WARP_SIZE)
adamas_attn_score_kernel(const adamas_attn_args a) {
    constexpr int E     = D/WARP_SIZE;
    constexpr int U     = D <= 128 ? 2*ADAMAS_ATTN_U : ADAMAS_ATTN_U;
    constexpr int NWARP = ADAMAS_ATTN_NWARP;

    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int64_t iq = blockIdx.z % a.n_q;
    const int64_t is = blockIdx.z / a.n_q;
    const int P  = a.budget;
    const int jb = blockIdx.y*ADAMAS_ATTN_SLOTS;
    const int je = min(P, jb + ADAMAS_ATTN_SLOTS);

    int64_t kvh, h0, irow;
    int ng;
    if (a.per_head) {
        h0   = blockIdx.x;
        kvh  = h0 / a.n_gqa;
        irow = h0;
        ng   = 1;
    } else {
        kvh  = blockIdx.x / a.n_hb;
        h0   = kvh*a.n_gqa + (blockIdx.x % a.n_hb)*NG;
        irow = kvh;
        ng   = (int) min((int64_t) NG, kvh*a.n_gqa + a.n_gqa - h0);
    }

    const int32_t * sel  = (const int32_t *) (a.idx + irow*a.inb1 + iq*a.inb2 + is*a.inb3);
    const char *    mrow = a.mask ? a.mask + iq*a.mnb1 + (is % a.mne3)*a.mnb3 : nullptr;
    const char *    kb   = a.k + kvh*a.knb2 + is*a.knb3;
    float *         lg   = a.logits + (blockIdx.x + gridDim.x*(int64_t) blockIdx.z)*NG*P;

    const float qk_scale = a.softcap != 0.0f ? a.scale/a.softcap : a.scale;

    float q[NG][E];
#pragma unroll
    for (int hh = 0; hh < NG; ++hh) {
#pragma unroll
        for (int i = 0; i < E; ++i) {
            q[hh][i] = hh < ng ? ((const float *) (a.q + iq*a.qnb1 + (h0 + hh)*a.qnb2 + is*a.qnb3))[lane*E + i] : 0.0f;
        }
    }

    // each warp U slots at a time, their mask and K loads in flight together
    for (int j0 = jb + warp*U; j0 < je; j0 += NWARP*U) {
        int   c[U];
        float mv[U];
        float kx[U][E], vx_unused[U][E];
        adamas_load_slots<E, U, false>(a, sel, mrow, kb, nullptr, j0, je, lane, c, mv, kx, vx_unused);
#pragma unroll
        for (int hh = 0; hh < NG; ++hh) {
            if (hh >= ng) {
                break;
            }
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const float l = adamas_rr_logit<E>(q[hh], kx[u], qk_scale, a.softcap, c[u], mv[u]);
                if (lane == 0 && j0 + u < je) {
                    lg[hh*P + j0 + u] = l;
                }
            }
        }
    }
}

// ABL (the harness's ablations only; 0 in the op) leaves out: 1 the radix select (the slots [n_lead, n_keep) are
// kept instead), 2 the V loads (V read as ones)
template <int D, int NG, int ABL = 0>
static __global__ void __launch_bounds__(ADAMAS_RR_NWARP*WARP_SIZE)
adamas_attn_rerank_kernel(const adamas_attn_args a) {
    constexpr int E     = D/WARP_SIZE;
    constexpr int U     = D <= 128 ? 8 : 4;
    constexpr int NWARP = ADAMAS_RR_NWARP;
    constexpr int NT    = NWARP*WARP_SIZE;

    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int tid  = threadIdx.x;
    const int64_t iq = blockIdx.z % a.n_q;
    const int64_t is = blockIdx.z / a.n_q;
    const int P = a.budget; // the pool

    int64_t kvh, h0, irow;
    int ng;
    if (a.per_head) {
        h0   = blockIdx.x;
        kvh  = h0 / a.n_gqa;
        irow = h0;
        ng   = 1;
    } else {
        kvh  = blockIdx.x / a.n_hb;
        h0   = kvh*a.n_gqa + (blockIdx.x % a.n_hb)*NG;
        irow = kvh;
        ng   = (int) min((int64_t) NG, kvh*a.n_gqa + a.n_gqa - h0);
    }

    const int32_t * sel  = (const int32_t *) (a.idx + irow*a.inb1 + iq*a.inb2 + is*a.inb3);
    const char *    vb   = a.v + kvh*a.vnb2 + is*a.vnb3;

    extern __shared__ float sm[];
    float * lg     = sm;                                                   // [NG][P] logits
    int   * list   = (int *) (lg + NG*P);                                  // [P] slots kept by some head
    float * sm_acc = sm;                                                   // [NWARP][NG][D], after the V pass
    const size_t big = (size_t) NG*P + P > (size_t) NWARP*NG*D ? (size_t) NG*P + P : (size_t) NWARP*NG*D; // floats, as the host's size
    float * sm_s   = sm + big;                                             // [NWARP][NG]
    float * sm_M   = sm_s + NWARP*NG;                                      // [NG]
    int   * hist   = (int *) (sm_M + NG);                                  // [256]
    int   * sm_i   = hist + 256;                                           // [NWARP + 2]
    float * sm_f   = (float *) (sm_i + NWARP + 2);                         // [NWARP]

    // 1. the pool's logits, written by the score kernel: into shared memory
    {
        const float * g = a.logits + (blockIdx.x + gridDim.x*(int64_t) blockIdx.z)*NG*P;
        for (int t = tid; t < ng*P; t += NT) {
            lg[t] = g[t];
        }
    }
    __syncthreads();

    // 2. per head: keep the first n_lead slots and the n_pick best of the others (radix select of the n_pick-th
    //    largest key, 8 bits a pass; then the ties at it in slot order), drop the rest (-INF)
    const int n_pick = a.n_keep - a.n_lead;
    const int per_t  = (P + NT - 1)/NT;               // each thread a contiguous run of slots: slot order = thread order
    const int t0     = min(P, max(a.n_lead, tid*per_t));
    const int t1     = min(P, (tid + 1)*per_t);
    if constexpr (ABL & 1) {
        for (int t = tid; t < ng*P; t += NT) {
            const int j = t % P;
            if (j >= a.n_keep) {
                lg[t] = -INFINITY;
            }
        }
        __syncthreads();
    }
    for (int hh = 0; hh < ng && !(ABL & 1); ++hh) {
        float * l = lg + hh*P;
        int n_fin_t = 0;
        for (int j = t0; j < t1; ++j) {
            n_fin_t += l[j] != -INFINITY;
        }
        int n_fin;
        adamas_block_scan<NWARP>(n_fin_t, sm_i, &n_fin);
        if (n_fin <= n_pick) {
            continue; // every finite slot stays
        }
        uint32_t prefix = 0, pmask = 0;
        int k = n_pick; // rank (1-based) of the threshold among the candidates still matching the prefix
        if (n_pick > 0) {
            for (int shift = 24; shift >= 0; shift -= 8) {
                for (int i = tid; i < 256; i += NT) {
                    hist[i] = 0;
                }
                __syncthreads();
                // one atomic per distinct bin and warp: logits crowd into few bins (the first pass sees little
                // more than sign and exponent), and same-address shared atomics serialize
                for (int i = 0; i < per_t; ++i) {
                    const int j = tid*per_t + i;
                    int bin = -1;
                    if (j >= t0 && j < t1 && l[j] != -INFINITY) {
                        const uint32_t key = adamas_rr_key(l[j]);
                        bin = (key & pmask) == prefix ? (int) ((key >> shift) & 0xFF) : -1;
                    }
                    const unsigned same = __match_any_sync(0xFFFFFFFF, bin);
                    if (bin >= 0 && lane == __ffs(same) - 1) {
                        atomicAdd(&hist[bin], __popc(same));
                    }
                }
                __syncthreads();
                if (warp == 0) {
                    // lane owns bins 255 - 8*lane - i (i < 8): from the largest digit down
                    int cnt[8], tot = 0;
#pragma unroll
                    for (int i = 0; i < 8; ++i) {
                        cnt[i] = hist[255 - 8*lane - i];
                        tot += cnt[i];
                    }
                    int incl = tot;
#pragma unroll
                    for (int o = 1; o < WARP_SIZE; o <<= 1) {
                        const int y = __shfl_up_sync(0xFFFFFFFF, incl, o);
                        incl += lane >= o ? y : 0;
                    }
                    int above = incl - tot;
#pragma unroll
                    for (int i = 0; i < 8; ++i) {
                        if (above < k && k <= above + cnt[i]) {
                            sm_i[NWARP]     = 255 - 8*lane - i;
                            sm_i[NWARP + 1] = k - above;
                        }
                        above += cnt[i];
                    }
                }
                __syncthreads();
                prefix |= (uint32_t) sm_i[NWARP] << shift;
                pmask  |= 0xFFu << shift;
                k       = sm_i[NWARP + 1];
            }
        }
        // k: how many slots at the threshold key stay, the earliest ones
        int n_tie_t = 0;
        for (int j = t0; j < t1; ++j) {
            n_tie_t += n_pick > 0 && l[j] != -INFINITY && adamas_rr_key(l[j]) == prefix;
        }
        int n_tie;
        int before = adamas_block_scan<NWARP>(n_tie_t, sm_i, &n_tie);
        for (int j = t0; j < t1; ++j) {
            if (l[j] == -INFINITY) {
                continue;
            }
            const uint32_t key = adamas_rr_key(l[j]);
            bool keep = false;
            if (n_pick > 0) {
                if (key > prefix) {
                    keep = true;
                } else if (key == prefix) {
                    keep = before < k;
                    before++;
                }
            }
            if (!keep) {
                l[j] = -INFINITY;
            }
        }
        __syncthreads();
    }

    // 3. each head's max over its kept logits, and the list of slots some head keeps (in slot order)
    {
        const int j0 = min(P, tid*per_t);
        for (int hh = 0; hh < ng; ++hh) {
            float m = -INFINITY;
            for (int j = j0; j < t1; ++j) {
                m = fmaxf(m, lg[hh*P + j]);
            }
            m = adamas_block_max<NWARP>(m, sm_f);
            if (tid == 0) {
                sm_M[hh] = m;
            }
        }
        int n_t = 0;
        for (int j = j0; j < t1; ++j) {
            bool any = false;
            for (int hh = 0; hh < ng; ++hh) {
                any |= lg[hh*P + j] != -INFINITY;
            }
            n_t += any;
        }
        int n_list;
        int pos = adamas_block_scan<NWARP>(n_t, sm_i, &n_list);
        for (int j = j0; j < t1; ++j) {
            bool any = false;
            for (int hh = 0; hh < ng; ++hh) {
                any |= lg[hh*P + j] != -INFINITY;
            }
            if (any) {
                list[pos++] = j;
            }
        }
        if (tid == 0) {
            sm_i[NWARP] = n_list;
        }
        __syncthreads();
    }
    const int n_list = sm_i[NWARP];

    // 4. softmax weights from the kept logits and the V sum: each warp U kept slots at a time
    float s[NG], acc[NG][E], M[NG];
#pragma unroll
    for (int hh = 0; hh < NG; ++hh) {
        s[hh] = 0.0f;
        M[hh] = hh < ng ? sm_M[hh] : -INFINITY;
#pragma unroll
        for (int i = 0; i < E; ++i) {
            acc[hh][i] = 0.0f;
        }
    }
    for (int e0 = warp*U; e0 < n_list; e0 += NWARP*U) {
        int   jj[U];
        float vx[U][E];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            jj[u] = e0 + u < n_list ? list[e0 + u] : -1;
            if constexpr (ABL & 2) {
#pragma unroll
                for (int i = 0; i < E; ++i) {
                    vx[u][i] = 1.0f;
                }
            } else if (jj[u] >= 0) {
                adamas_load_row<E>(vb + sel[jj[u]]*a.vnb1, a.vt, lane*E, vx[u]);
            }
        }
#pragma unroll
        for (int hh = 0; hh < NG; ++hh) {
            if (hh >= ng) {
                break;
            }
#pragma unroll
            for (int u = 0; u < U; ++u) {
                if (jj[u] < 0) {
                    continue;
                }
                const float lv = lg[hh*P + jj[u]];
                if (lv == -INFINITY) {
                    continue;
                }
                const float p = expf(lv - M[hh]);
                s[hh] += p;
#pragma unroll
                for (int i = 0; i < E; ++i) {
                    acc[hh][i] += p*vx[u][i];
                }
            }
        }
    }
    __syncthreads(); // the logits and the list are done with: their space takes the accumulators

    // 5. merge the warps in a fixed order (the result does not depend on timing)
#pragma unroll
    for (int hh = 0; hh < NG; ++hh) {
        if (hh >= ng) {
            break;
        }
        if (lane == 0) {
            sm_s[warp*NG + hh] = s[hh];
        }
#pragma unroll
        for (int i = 0; i < E; ++i) {
            sm_acc[(warp*NG + hh)*D + lane*E + i] = acc[hh][i];
        }
    }
    __syncthreads();
    for (int t = tid; t < ng*D; t += NT) {
        const int hh = t / D;
        const int d  = t % D;
        float o = 0.0f, S = 0.0f;
        for (int w = 0; w < NWARP; ++w) {
            S += sm_s[w*NG + hh];
            o += sm_acc[(w*NG + hh)*D + d];
        }
        const int64_t hq = (h0 + hh) + a.n_head*(iq + a.n_q*is);
        a.dst[d + D*hq] = sm_M[hh] == -INFINITY ? 0.0f : o/S;
    }
}

// Rerank in one launch (v10; per-head rows, pools up to ADAMAS_RRC_MAX_CL*ADAMAS_RRC_SLOTS(D)): a thread-block
// cluster per index row and query, each block ADAMAS_RRC_SLOTS(D) slots of the pool. A block loads its slots'
// mask, K and V rows together (V of every pool slot, not only the kept ones: no dependent V load after the
// selection), scores them, and shares the logits through distributed shared memory; each block then ranks its own
// slots against the whole pool (the radix select's rule: the first n_lead finite slots, then the n_keep - n_lead
// largest logits, ties to the earlier slot), softmax-sums its kept V rows, and block 0 merges the blocks' partials
// in rank order. Against the two-kernel rerank it saves the score kernel's launch, the logits' global round trip
// (44% of the score kernel's samples carried ncu's "drain" reason) and the V pass's dependent load (62% of the
// rerank block's samples waited at barriers, most after the V pass): docs/perf-notes.md, 2026-12-07.
#define ADAMAS_RRC_MAX_CL 8 // the portable cluster size
#define ADAMAS_RRC_NWARP  8
#define ADAMAS_RRC_U(D)     ((D) <= 128 ? 8 : 4)                  // slots a warp holds in registers (K and V)
#define ADAMAS_RRC_SLOTS(D) (ADAMAS_RRC_NWARP*ADAMAS_RRC_U(D))    // slots a block scores

template <int D>
static __global__ void __launch_bounds__(ADAMAS_RRC_NWARP*WARP_SIZE)
adamas_attn_rerank_cluster_kernel(const adamas_attn_args a) {
#if defined(ADAMAS_CLUSTERS) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    namespace cg = cooperative_groups;
    constexpr int E     = D/WARP_SIZE;
    constexpr int U     = ADAMAS_RRC_U(D);
    constexpr int S     = ADAMAS_RRC_SLOTS(D);
    constexpr int NWARP = ADAMAS_RRC_NWARP;
    constexpr int NT    = NWARP*WARP_SIZE;
    constexpr int TPS   = NT/S;                                  // threads ranking one slot
    static_assert(NT % S == 0 && TPS <= WARP_SIZE, "a slot's rankers share a warp");

    cg::cluster_group cluster = cg::this_cluster();
    const int rank = (int) cluster.block_rank();                // this block's slots: [rank*S, rank*S + S)
    const int n_cl = (int) cluster.num_blocks();

    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int tid  = threadIdx.x;
    const int64_t h    = blockIdx.y;                            // query head = index row (per-head rows)
    const int64_t kvh  = h / a.n_gqa;
    const int64_t iq   = blockIdx.z % a.n_q;
    const int64_t is   = blockIdx.z / a.n_q;
    const int     P    = a.budget;                              // the pool
    const int     jb   = rank*S;

    __shared__ float lg_own[S];                                 // this block's logits, read by the whole cluster
    __shared__ float lg_all[ADAMAS_RRC_MAX_CL*S];               // every slot's logit
    __shared__ int   keep[S];
    __shared__ float sm_w[NWARP];
    __shared__ float sm_s[NWARP];
    __shared__ float sm_acc[NWARP][D];
    __shared__ float part_acc[D];                               // the block's partial: max, sum, V sum
    __shared__ float part_ms[2];

    const int32_t * sel  = (const int32_t *) (a.idx + h*a.inb1 + iq*a.inb2 + is*a.inb3);
    const char *    mrow = a.mask ? a.mask + iq*a.mnb1 + (is % a.mne3)*a.mnb3 : nullptr;
    const char *    kb   = a.k + kvh*a.knb2 + is*a.knb3;
    const char *    vb   = a.v + kvh*a.vnb2 + is*a.vnb3;
    const float qk_scale = a.softcap != 0.0f ? a.scale/a.softcap : a.scale;

    float q[E];
#pragma unroll
    for (int i = 0; i < E; ++i) {
        q[i] = ((const float *) (a.q + iq*a.qnb1 + h*a.qnb2 + is*a.qnb3))[lane*E + i];
    }

    // 1. each warp U slots: index, then mask, K and V together; the logits as the score kernel computes them
    const int j0 = jb + warp*U;
    int   c[U];
    float mv[U], lv[U];
    float kx[U][E], vx[U][E];
    adamas_load_slots<E, U, true>(a, sel, mrow, kb, vb, j0, P, lane, c, mv, kx, vx);
#pragma unroll
    for (int u = 0; u < U; ++u) {
        lv[u] = adamas_rr_logit<E>(q, kx[u], qk_scale, a.softcap, c[u], mv[u]);
        if (lane == 0) {
            lg_own[warp*U + u] = lv[u];
        }
    }
    cluster.sync(); // every block's logits written and visible

    // 2. the whole pool's logits, then each own slot's rank among the non-lead finite slots
    for (int t = tid; t < P; t += NT) {
        const float * src = cluster.map_shared_rank(lg_own, t / S);
        lg_all[t] = src[t % S];
    }
    __syncthreads();
    {
        const int sl = tid / TPS;                               // own slot
        const int part = tid % TPS;
        const int j = jb + sl;
        const float l = j < P ? lg_all[j] : -INFINITY;
        const uint32_t kj = adamas_rr_key(l);
        int r = 0;
        if (l != -INFINITY && j >= a.n_lead && !a.par_rank) {
            for (int i = part; i < P; i += TPS) {
                if (i < a.n_lead) {
                    continue;
                }
                const float li = lg_all[i];
                const uint32_t ki = adamas_rr_key(li);
                r += li != -INFINITY && (ki > kj || (ki == kj && i < j));
            }
        } else if (l != -INFINITY && j >= a.n_lead) {
            // 8 shared loads in flight a trip, where the loop above waits for one load a compare
            for (int i0 = part; i0 < P; i0 += 8*TPS) {
                float li[8];
#pragma unroll
                for (int u = 0; u < 8; ++u) {
                    const int i = i0 + u*TPS;
                    li[u] = i < P && i >= a.n_lead ? lg_all[i] : -INFINITY; // lead slots are not ranked
                }
#pragma unroll
                for (int u = 0; u < 8; ++u) {
                    const uint32_t ki = adamas_rr_key(li[u]);
                    r += li[u] != -INFINITY && (ki > kj || (ki == kj && i0 + u*TPS < j));
                }
            }
        }
#pragma unroll
        for (int o = TPS/2; o > 0; o >>= 1) {
            r += __shfl_xor_sync(0xFFFFFFFF, r, o);
        }
        if (part == 0) {
            keep[sl] = l != -INFINITY && (j < a.n_lead || r < a.n_keep - a.n_lead);
        }
    }
    __syncthreads();

    // 3. the block's kept maximum, then each warp's softmax-weighted V sum, merged in warp order
    float m = -INFINITY;
#pragma unroll
    for (int u = 0; u < U; ++u) {
        if (keep[warp*U + u]) {
            m = fmaxf(m, lv[u]);
        }
    }
    if (lane == 0) {
        sm_w[warp] = m;
    }
    __syncthreads();
    m = -INFINITY;
#pragma unroll
    for (int w = 0; w < NWARP; ++w) {
        m = fmaxf(m, sm_w[w]);
    }
    float s = 0.0f, acc[E];
#pragma unroll
    for (int i = 0; i < E; ++i) {
        acc[i] = 0.0f;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
        if (keep[warp*U + u]) {
            const float p = expf(lv[u] - m);
            s += p;
#pragma unroll
            for (int i = 0; i < E; ++i) {
                acc[i] += p*vx[u][i];
            }
        }
    }
    if (lane == 0) {
        sm_s[warp] = s;
    }
#pragma unroll
    for (int i = 0; i < E; ++i) {
        sm_acc[warp][lane*E + i] = acc[i];
    }
    __syncthreads();
    for (int d = tid; d < D; d += NT) {
        float o = 0.0f;
        for (int w = 0; w < NWARP; ++w) {
            o += sm_acc[w][d];
        }
        part_acc[d] = o;
    }
    if (tid == 0) {
        float S_ = 0.0f;
        for (int w = 0; w < NWARP; ++w) {
            S_ += sm_s[w];
        }
        part_ms[0] = m;
        part_ms[1] = S_;
    }
    cluster.sync(); // every block's partial written and visible

    // 4. block 0 merges the partials in rank order (the result does not depend on timing)
    if (rank == 0) {
        float M = -INFINITY;
        for (int r = 0; r < n_cl; ++r) {
            M = fmaxf(M, cluster.map_shared_rank(part_ms, r)[0]);
        }
        for (int d = tid; d < D; d += NT) {
            float o = 0.0f, S_ = 0.0f;
            if (M != -INFINITY) {
                for (int r = 0; r < n_cl; ++r) {
                    const float * pm = cluster.map_shared_rank(part_ms, r);
                    if (pm[0] == -INFINITY) {
                        continue;
                    }
                    const float f = expf(pm[0] - M);
                    S_ += f*pm[1];
                    o  += f*cluster.map_shared_rank(part_acc, r)[d];
                }
            }
            const int64_t hq = h + a.n_head*(iq + a.n_q*is);
            a.dst[d + D*hq] = M == -INFINITY ? 0.0f : o/S_;
        }
    }
    cluster.sync(); // no block leaves while block 0 still reads its shared memory
#else
    (void) a;
    __trap(); // never launched: adamas_attn_rerank_cluster_ok checks the compiled architecture first
#endif
}

// whether the cluster rerank serves this launch: per-head rows, a pool the cluster holds, and a kernel compiled
// for sm_90 or newer running on such a device (a build for older architectures JIT-compiled on Hopper would hold
// the empty body)
template <int D>
static bool adamas_attn_rerank_cluster_ok(const adamas_attn_args & a) {
#ifdef ADAMAS_CLUSTERS
    if (!a.rr_cluster || !a.per_head || a.budget > ADAMAS_RRC_MAX_CL*ADAMAS_RRC_SLOTS(D)) {
        return false;
    }
    static const bool compiled = adamas_cluster_compiled(adamas_attn_rerank_cluster_kernel<D>); // per instantiation
    return compiled;
#else
    (void) a;
    return false;
#endif
}

template <int D>
static void adamas_attn_rerank_cluster_launch(const adamas_attn_args & a, cudaStream_t stream) {
#ifdef ADAMAS_CLUSTERS
    const int n_cl = (a.budget + ADAMAS_RRC_SLOTS(D) - 1)/ADAMAS_RRC_SLOTS(D);
    adamas_launch_cluster(adamas_attn_rerank_cluster_kernel<D>, dim3((unsigned) n_cl, (unsigned) a.n_head, (unsigned) (a.n_q*a.ns)),
        dim3(ADAMAS_RRC_NWARP*WARP_SIZE, 1, 1), (unsigned) n_cl, stream, a);
#else
    (void) a; (void) stream;
#endif
}

// merges the splits of one (head, query, stream): grid n_head*n_q*ns, D threads
template <int D>
static __global__ void adamas_attn_combine_kernel(const adamas_attn_args a) {
    const int64_t hq = blockIdx.x;
    const int     d  = threadIdx.x;
    const float * p  = a.part + hq*a.n_split*(D + 2);
    float M = -INFINITY;
    for (int s = 0; s < a.n_split; ++s) {
        M = fmaxf(M, p[s*(D + 2)]);
    }
    float o = 0.0f;
    float S = 0.0f;
    if (M != -INFINITY) {
        for (int s = 0; s < a.n_split; ++s) {
            const float ms = p[s*(D + 2)];
            if (ms == -INFINITY) {
                continue;
            }
            const float f = expf(ms - M);
            S += f*p[s*(D + 2) + 1];
            o += f*p[s*(D + 2) + 2 + d];
        }
    }
    a.dst[d + D*hq] = M == -INFINITY ? 0.0f : o/S;
}

static int adamas_attn_ng(int D, int64_t n_gqa, bool per_head) {
    if (per_head) {
        return 1;
    }
    const int64_t cap = D >= 256 ? 4 : 8; // NG*D floats per warp in shared memory
    const int64_t g = std::min(n_gqa, cap);
    return g <= 1 ? 1 : g <= 2 ? 2 : g <= 4 ? 4 : 8;
}

// rerank: n_keep of the budget's slots, in one block per index row and query
static bool adamas_attn_is_rerank(int budget, int n_keep) {
    return n_keep > 0 && n_keep < budget;
}

template <int D, int NG>
static void adamas_attn_rerank_launch_ng(const adamas_attn_args & a, cudaStream_t stream) {
    if constexpr (NG == 1) {
        if (adamas_attn_rerank_cluster_ok<D>(a)) {
            adamas_attn_rerank_cluster_launch<D>(a, stream);
            return;
        }
    }
    const size_t smem = adamas_attn_rerank_smem(D, NG, a.budget);
    const int64_t nx = a.per_head ? a.n_head : a.n_head_kv*a.n_hb;
    const dim3 grid((unsigned) nx, 1, (unsigned) (a.n_q*a.ns));
    const dim3 grid_s((unsigned) nx, (unsigned) ((a.budget + ADAMAS_ATTN_SLOTS - 1)/ADAMAS_ATTN_SLOTS), (unsigned) (a.n_q*a.ns));
    adamas_attn_score_kernel<D, NG><<<grid_s, ADAMAS_ATTN_NWARP*WARP_SIZE, 0, stream>>>(a);
    adamas_set_smem(adamas_attn_rerank_kernel<D, NG>, smem);
    adamas_attn_rerank_kernel<D, NG><<<grid, ADAMAS_RR_NWARP*WARP_SIZE, smem, stream>>>(a);
}

template <int D, int NG>
static void adamas_attn_launch_ng(const adamas_attn_args & a, cudaStream_t stream) {
    if (adamas_attn_is_rerank(a.budget, a.n_keep)) {
        adamas_attn_rerank_launch_ng<D, NG>(a, stream);
        return;
    }
    const size_t smem = (size_t) ADAMAS_ATTN_NWARP*NG*(D + 2)*sizeof(float);
    const int64_t nx = a.per_head ? a.n_head : a.n_head_kv*a.n_hb;
    const dim3 grid((unsigned) nx, (unsigned) a.n_split, (unsigned) (a.n_q*a.ns));
    adamas_attn_kernel<D, NG><<<grid, ADAMAS_ATTN_NWARP*WARP_SIZE, smem, stream>>>(a);
    if (a.n_split > 1) {
        adamas_attn_combine_kernel<D><<<(unsigned) (a.n_head*a.n_q*a.ns), D, 0, stream>>>(a);
    }
}

template <int D>
static void adamas_attn_launch_d(const adamas_attn_args & a, int ng, cudaStream_t stream) {
    switch (ng) {
        case 1: adamas_attn_launch_ng<D, 1>(a, stream); break;
        case 2: adamas_attn_launch_ng<D, 2>(a, stream); break;
        case 4: adamas_attn_launch_ng<D, 4>(a, stream); break;
        default:
            if constexpr (D < 256) {
                adamas_attn_launch_ng<D, 8>(a, stream);
            }
            break;
    }
}

static int adamas_attn_n_split(int budget) {
    return std::max(1, (budget + ADAMAS_ATTN_SLOTS - 1)/ADAMAS_ATTN_SLOTS);
}

// floats of the rerank's logits buffer a.logits
static int64_t adamas_attn_logits_size(int D, int64_t n_head, int64_t n_head_kv, bool per_head, int64_t n_q, int64_t ns,
                                       int budget, int n_keep) {
    if (!adamas_attn_is_rerank(budget, n_keep)) {
        return 0;
    }
    const int64_t n_gqa = n_head/n_head_kv;
    const int     ng    = adamas_attn_ng(D, n_gqa, per_head);
    const int64_t nx    = per_head ? n_head : n_head_kv*((n_gqa + ng - 1)/ng);
    return nx*n_q*ns*ng*budget;
}

// floats of the partials buffer a.part (with n_split > 1; a rerank block merges its own)
static int64_t adamas_attn_part_size(int D, int64_t n_head, int64_t n_q, int64_t ns, int budget, int n_keep) {
    const int n_split = adamas_attn_is_rerank(budget, n_keep) ? 1 : adamas_attn_n_split(budget);
    return n_split > 1 ? n_head*n_q*ns*n_split*(D + 2) : 0;
}

// sets a.n_hb and a.n_split; a.part must hold adamas_attn_part_size floats
static void adamas_attn_launch(adamas_attn_args & a, int D, cudaStream_t stream) {
    const int ng = adamas_attn_ng(D, a.n_gqa, a.per_head);
    a.n_hb    = (a.n_gqa + ng - 1)/ng;
    a.n_split = adamas_attn_is_rerank(a.budget, a.n_keep) ? 1 : adamas_attn_n_split(a.budget);
    if (a.n_head == 0 || a.n_q == 0 || a.ns == 0) {
        return;
    }
    switch (D) {
        case 32:  adamas_attn_launch_d<32> (a, ng, stream); break;
        case 64:  adamas_attn_launch_d<64> (a, ng, stream); break;
        case 128: adamas_attn_launch_d<128>(a, ng, stream); break;
        case 256: adamas_attn_launch_d<256>(a, ng, stream); break;
        default:  break; // refused by ggml_cuda_adamas_attn_supported
    }
}

#ifndef ADAMAS_CUDA_STANDALONE

static int adamas_kv_type(ggml_type t) {
    switch (t) {
        case GGML_TYPE_F32:  return ADAMAS_KV_F32;
        case GGML_TYPE_F16:  return ADAMAS_KV_F16;
        case GGML_TYPE_BF16: return ADAMAS_KV_BF16;
        case GGML_TYPE_Q8_0: return ADAMAS_KV_Q8_0;
        case GGML_TYPE_Q4_0: return ADAMAS_KV_Q4_0;
        default:             return -1;
    }
}

bool ggml_cuda_adamas_attn_supported(int device, const ggml_tensor * op) {
    const ggml_tensor * q   = op->src[0];
    const ggml_tensor * k   = op->src[1];
    const ggml_tensor * v   = op->src[2];
    const ggml_tensor * idx = op->src[4];
    // the kernel holds D/32 values per lane: head dims the encode accepts, Dv == D, and the K/V types above
    // (the row strides of those types keep the 4-byte loads aligned)
    if (!ggml_adamas_supported_dim(q->ne[0]) || v->ne[0] != k->ne[0] || adamas_kv_type(k->type) < 0 ||
        adamas_kv_type(v->type) < 0 || k->nb[1] % 4 != 0 || v->nb[1] % 4 != 0) {
        return false;
    }
    // rerank: the pool's logits stay in shared memory, within this device's limit
    const int budget = (int) idx->ne[0];
    const int n_keep = ggml_get_op_params_i32(op, 2);
    if (adamas_attn_is_rerank(budget, n_keep)) {
        const int ng = adamas_attn_ng((int) q->ne[0], q->ne[2]/k->ne[2], idx->ne[1] == q->ne[2]);
        return adamas_attn_rerank_smem((int) q->ne[0], ng, budget) <= ggml_cuda_info().devices[device].smpbo;
    }
    return true;
}

void ggml_cuda_op_adamas_attn(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    const ggml_tensor * q    = dst->src[0];
    const ggml_tensor * k    = dst->src[1];
    const ggml_tensor * v    = dst->src[2];
    const ggml_tensor * mask = dst->src[3];
    const ggml_tensor * idx  = dst->src[4];

    GGML_ASSERT(ggml_is_contiguous(dst));
    const int D = (int) q->ne[0];

    adamas_attn_args a = {};
    a.q = (const char *) q->data; a.qnb1 = q->nb[1]; a.qnb2 = q->nb[2]; a.qnb3 = q->nb[3];
    a.k = (const char *) k->data; a.knb1 = k->nb[1]; a.knb2 = k->nb[2]; a.knb3 = k->nb[3]; a.kt = adamas_kv_type(k->type);
    a.v = (const char *) v->data; a.vnb1 = v->nb[1]; a.vnb2 = v->nb[2]; a.vnb3 = v->nb[3]; a.vt = adamas_kv_type(v->type);
    a.mask = mask ? (const char *) mask->data : nullptr;
    a.mask_f16 = mask && mask->type == GGML_TYPE_F16;
    a.mnb1 = mask ? mask->nb[1] : 0;
    a.mnb3 = mask ? mask->nb[3] : 0;
    a.mne3 = mask ? mask->ne[3] : 1;
    a.idx = (const char *) idx->data; a.inb1 = idx->nb[1]; a.inb2 = idx->nb[2]; a.inb3 = idx->nb[3];
    a.budget    = (int) idx->ne[0];
    a.n_head    = q->ne[2];
    a.n_head_kv = k->ne[2];
    a.n_gqa     = a.n_head/a.n_head_kv;
    a.per_head  = idx->ne[1] == a.n_head; // as the CPU kernel decides (MHA: the same either way)
    a.n_q       = q->ne[1];
    a.ns        = q->ne[3];
    a.n_kv      = k->ne[1];
    a.scale     = ggml_get_op_params_f32(dst, 0);
    a.softcap   = ggml_get_op_params_f32(dst, 1);
    a.n_keep    = ggml_get_op_params_i32(dst, 2);
    a.n_lead    = ggml_get_op_params_i32(dst, 3);
    a.dst       = (float *) dst->data;
    // GGML_CUDA_ADAMAS_RR_CLUSTER=0: the two-kernel rerank everywhere (as upstream's GGML_CUDA_* switches: for A/B runs)
    static const bool rr_cluster_env = adamas_env_switch("GGML_CUDA_ADAMAS_RR_CLUSTER", true);
    a.rr_cluster = rr_cluster_env && GGML_CUDA_CC_IS_NVIDIA(ggml_cuda_info().devices[ctx.device].cc) &&
                   ggml_cuda_info().devices[ctx.device].cc >= GGML_CUDA_CC_HOPPER;
    a.par_rank = adamas_par_rank_env();
    GGML_ASSERT(a.kt >= 0 && a.vt >= 0);
    GGML_ASSERT(a.n_q*a.ns <= 65535);

    ggml_cuda_pool_alloc<float> part(ctx.pool(), std::max<int64_t>(1, adamas_attn_part_size(D, a.n_head, a.n_q, a.ns, a.budget, a.n_keep)));
    a.part = part.get();
    ggml_cuda_pool_alloc<float> logits(ctx.pool(), std::max<int64_t>(1, adamas_attn_logits_size(D, a.n_head, a.n_head_kv,
        a.per_head, a.n_q, a.ns, a.budget, a.n_keep)));
    a.logits = logits.get();
    adamas_attn_launch(a, D, ctx.stream());
}

#endif // ADAMAS_CUDA_STANDALONE
