// GGML_OP_ADAMAS_ATTN on the CPU: softmax attention of one query row over the cells listed in idx,
// reading those K and V rows in place (converted to F32 one row at a time: F16 and quantized caches
// cost only the selected rows). Two passes per (head, query, stream): logits, then the weighted V sum; with
// n_keep (ggml_adamas_attn_rerank) the logits below the n_keep-th largest are dropped in between.
// Rows are split evenly over the threads.

#include "adamas-attn.h"

#include "ggml-adamas.h"
#include "ggml-cpu.h"
#include "ggml-cpu-impl.h"
#include "ggml-impl.h"
#include "simd-mappings.h"
#include "vec.h"

#include <algorithm>
#include <functional>
#include <cmath>
#include <cstdint>
#include <cstring>

size_t ggml_cpu_adamas_attn_wsize(const ggml_tensor * dst, int n_tasks) {
    const ggml_tensor * k   = dst->src[1];
    const ggml_tensor * v   = dst->src[2];
    const ggml_tensor * idx = dst->src[4];
    // logits (twice: a copy for the n_keep threshold), the kept slots + one K or V row in F32 + the accumulator,
    // per thread
    const size_t per_thread = 3*idx->ne[0] + std::max(k->ne[0], v->ne[0]) + v->ne[0] + 16;
    return n_tasks*per_thread*sizeof(float);
}

// slots prefetched ahead of the one computed
static constexpr int64_t ADAMAS_PF = 16;

// prefetches row c (if any) of a K or V head: bytes [0, row_bytes) at base + c*nb1. Always inlined: GCC 12 takes a
// function that only prefetches for one without effects (pure-const) and drops its calls.
__attribute__((always_inline)) static inline void adamas_prefetch(const char * base, size_t nb1, size_t row_bytes, int32_t c) {
    if (c >= 0) {
        const char * p = base + (size_t) c*nb1;
        for (size_t o = 0; o < row_bytes; o += 64) {
            __builtin_prefetch(p + o);
        }
    }
}

// One row of K or V as F32: in place for F32, else converted into buf.
static inline const float * adamas_row_f32(const ggml_tensor * t, const char * row, float * buf) {
    switch (t->type) {
        case GGML_TYPE_F32: return (const float *) row;
        case GGML_TYPE_F16: ggml_cpu_fp16_to_fp32((const ggml_fp16_t *) row, buf, t->ne[0]); return buf;
        default:            ggml_get_type_traits(t->type)->to_float(row, buf, t->ne[0]); return buf;
    }
}

void ggml_compute_forward_adamas_attn(const ggml_compute_params * params, ggml_tensor * dst) {
    const ggml_tensor * q    = dst->src[0];
    const ggml_tensor * k    = dst->src[1];
    const ggml_tensor * v    = dst->src[2];
    const ggml_tensor * mask = dst->src[3];
    const ggml_tensor * idx  = dst->src[4];

    const float scale   = ggml_get_op_params_f32(dst, 0);
    const float softcap = ggml_get_op_params_f32(dst, 1);
    const int   n_keep  = ggml_get_op_params_i32(dst, 2); // 0: every slot
    const int   n_lead  = ggml_get_op_params_i32(dst, 3); // with n_keep: slots kept whatever their logit

    const int64_t D       = q->ne[0];
    const int64_t Dv      = v->ne[0];
    const int64_t n_q     = q->ne[1];
    const int64_t n_head  = q->ne[2];
    const int64_t ns      = q->ne[3];
    const int64_t n_gqa   = n_head/k->ne[2];
    const int64_t budget  = idx->ne[0];
    const bool    per_head = idx->ne[1] == n_head;

    GGML_ASSERT(k->type == GGML_TYPE_F32 || k->type == GGML_TYPE_F16 || ggml_get_type_traits(k->type)->to_float);
    GGML_ASSERT(v->type == GGML_TYPE_F32 || v->type == GGML_TYPE_F16 || ggml_get_type_traits(v->type)->to_float);
    GGML_ASSERT(params->wsize >= ggml_cpu_adamas_attn_wsize(dst, params->nth));

    float * wbase  = (float *) params->wdata + params->ith*(3*budget + std::max(D, Dv) + Dv + 16);
    float * logits = wbase;
    float * sorted = logits + budget;
    int32_t * kept = (int32_t *) (sorted + budget);
    float * row    = sorted + 2*budget;
    float * acc    = row + std::max(D, Dv);

    // softcap folds into the scale as in ggml_flash_attn_ext: softcap*tanh(s*scale/softcap)
    const float qk_scale = softcap != 0.0f ? scale/softcap : scale;

    const size_t k_row = ggml_row_size(k->type, D);
    const size_t v_row = ggml_row_size(v->type, Dv);

    const int64_t nr  = n_head*n_q*ns;
    const int64_t dr  = (nr + params->nth - 1)/params->nth;
    const int64_t ir0 = dr*params->ith;
    const int64_t ir1 = std::min(ir0 + dr, nr);

    for (int64_t ir = ir0; ir < ir1; ++ir) {
        const int64_t h   = ir % n_head;
        const int64_t iq  = (ir / n_head) % n_q;
        const int64_t is  = ir / (n_head*n_q);
        const int64_t kvh = h / n_gqa;

        const float   * qrow = (const float *) ((const char *) q->data + iq*q->nb[1] + h*q->nb[2] + is*q->nb[3]);
        const int32_t * sel  = (const int32_t *) ((const char *) idx->data + (per_head ? h : kvh)*idx->nb[1]
                                                  + iq*idx->nb[2] + is*idx->nb[3]);
        const char * mrow = mask ? (const char *) mask->data + iq*mask->nb[1] + (is % mask->ne[3])*mask->nb[3] : nullptr;
        const char * kbase = (const char *) k->data + kvh*k->nb[2] + is*k->nb[3];
        const char * vbase = (const char *) v->data + kvh*v->nb[2] + is*v->nb[3];

        // pass 1: logits of the visible selected cells (-INF for skipped slots). The rows are scattered over the
        // cache (latency bound): each is prefetched ADAMAS_PF slots ahead.
        for (int64_t j = 0; j < std::min<int64_t>(ADAMAS_PF, budget); ++j) {
            adamas_prefetch(kbase, k->nb[1], k_row, sel[j]);
        }
        float M = -INFINITY;
        for (int64_t j = 0; j < budget; ++j) {
            if (j + ADAMAS_PF < budget) {
                adamas_prefetch(kbase, k->nb[1], k_row, sel[j + ADAMAS_PF]);
            }
            const int32_t c = sel[j];
            float mv = 0.0f;
            if (c >= 0 && mrow) {
                mv = mask->type == GGML_TYPE_F16 ? GGML_CPU_FP16_TO_FP32(((const ggml_fp16_t *) mrow)[c])
                                                 : ((const float *) mrow)[c];
            }
            if (c < 0 || mv == -INFINITY) {
                logits[j] = -INFINITY;
                continue;
            }
            GGML_ASSERT(c < k->ne[1]);
            const float * kr = adamas_row_f32(k, kbase + c*k->nb[1], row);
            float s = 0.0f;
            ggml_vec_dot_f32((int) D, &s, 0, qrow, 0, kr, 0, 1);
            s *= qk_scale;
            if (softcap != 0.0f) {
                s = softcap*tanhf(s);
            }
            s += mv;
            logits[j] = s;
            M = std::max(M, s);
        }

        // rerank: the first n_lead slots stay, and of the others the n_keep - n_lead highest logits; at the
        // threshold the earlier slots (better code rank)
        if (n_keep > 0 && M != -INFINITY) {
            const int64_t n_pick = n_keep - n_lead;
            int64_t n_fin = 0;
            for (int64_t j = n_lead; j < budget; ++j) {
                if (logits[j] != -INFINITY) {
                    sorted[n_fin++] = logits[j];
                }
            }
            if (n_fin > n_pick) {
                float thr = INFINITY;
                int64_t n_ties = 0; // slots at thr that stay
                if (n_pick > 0) {
                    std::nth_element(sorted, sorted + (n_pick - 1), sorted + n_fin, std::greater<float>());
                    thr = sorted[n_pick - 1];
                    int64_t n_above = 0;
                    for (int64_t j = 0; j < n_fin; ++j) {
                        n_above += sorted[j] > thr;
                    }
                    n_ties = n_pick - n_above;
                }
                for (int64_t j = n_lead; j < budget; ++j) {
                    if (logits[j] == -INFINITY || logits[j] > thr) {
                        continue;
                    }
                    if (logits[j] == thr && n_ties > 0) {
                        n_ties--;
                        continue;
                    }
                    logits[j] = -INFINITY;
                }
                M = -INFINITY;
                for (int64_t j = 0; j < budget; ++j) {
                    M = std::max(M, logits[j]);
                }
            }
        }

        float * out = (float *) ((char *) dst->data + h*dst->nb[1] + iq*dst->nb[2] + is*dst->nb[3]);
        if (M == -INFINITY) {
            // nothing visible was selected
            std::fill(out, out + Dv, 0.0f);
            continue;
        }

        // pass 2: softmax weights and the V sum (the kept rows prefetched ahead too)
        int64_t n_kept = 0;
        for (int64_t j = 0; j < budget; ++j) {
            if (logits[j] != -INFINITY) {
                kept[n_kept++] = (int32_t) j;
            }
        }
        for (int64_t i = 0; i < std::min<int64_t>(ADAMAS_PF, n_kept); ++i) {
            adamas_prefetch(vbase, v->nb[1], v_row, sel[kept[i]]);
        }
        std::fill(acc, acc + Dv, 0.0f);
        float S = 0.0f;
        for (int64_t i = 0; i < n_kept; ++i) {
            if (i + ADAMAS_PF < n_kept) {
                adamas_prefetch(vbase, v->nb[1], v_row, sel[kept[i + ADAMAS_PF]]);
            }
            const int64_t j = kept[i];
            const float p = expf(logits[j] - M);
            S += p;
            const float * vr = adamas_row_f32(v, vbase + sel[j]*v->nb[1], row);
            ggml_vec_mad_f32((int) Dv, acc, vr, p);
        }
        const float inv = 1.0f/S;
        for (int64_t d = 0; d < Dv; ++d) {
            out[d] = acc[d]*inv;
        }
    }
}
