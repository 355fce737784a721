// GGML_OP_ADAMAS_ENCODE on the CPU: per head vector, an orthonormal Walsh-Hadamard transform (unless
// skipped), then the 2-bit bucket of each coordinate stored as a sign plane and a magnitude plane
// (layout in ggml-adamas.h). Vectors are split evenly over the threads.

#include "adamas-encode.h"

#include "ggml-adamas.h"
#include "ggml-cpu-impl.h"
#include "ggml-impl.h"
#include "simd-mappings.h"

#include <cmath>
#include <cstdint>
#include <cstring>

// In-place unnormalized FWHT of n (power of two) floats; the butterflies of one stage are independent,
// so the inner loop vectorizes.
static void adamas_fwht(float * x, int n) {
    for (int h = 1; h < n; h <<= 1) {
        for (int i = 0; i < n; i += 2*h) {
            for (int j = i; j < i + h; ++j) {
                const float a = x[j];
                const float b = x[j + h];
                x[j]     = a + b;
                x[j + h] = a - b;
            }
        }
    }
}

// Codes of one vector y (already transformed) into out[0, D/4).
static void adamas_pack(const float * y, int D, float t, uint8_t * out) {
    uint8_t * s = out;
    uint8_t * m = out + D/8;
    for (int b = 0; b < D/8; ++b) {
        uint8_t sb = 0;
        uint8_t mb = 0;
        for (int i = 0; i < 8; ++i) {
            const float v = y[8*b + i];
            sb |= (uint8_t) (v > 0.0f)               << i;
            mb |= (uint8_t) (v <= -t || v > t)       << i;
        }
        s[b] = sb;
        m[b] = mb;
    }
}

void ggml_compute_forward_adamas_encode(const ggml_compute_params * params, ggml_tensor * dst) {
    const ggml_tensor * a    = dst->src[0];
    const ggml_tensor * idxs  = dst->src[1]; // set_rows form: cell of each row (NULL: the row itself)
    const bool          scatter = dst->src[2] != nullptr; // set_rows form

    const enum ggml_adamas_thr_mode mode = (enum ggml_adamas_thr_mode) ggml_get_op_params_i32(dst, 0);
    const float thr      = ggml_get_op_params_f32(dst, 1);
    const bool  skip_wht = ggml_get_op_params_i32(dst, 2) != 0;
    const bool  round_f16 = ggml_get_op_params_i32(dst, 3) != 0 && a->type == GGML_TYPE_F32;

    const int     D      = (int) a->ne[0];
    const int64_t n_head = a->ne[1];
    const int64_t n_rows = a->ne[2];
    const int64_t ne3    = a->ne[3];
    const size_t  csize  = GGML_ADAMAS_CODE_SIZE(D);

    GGML_ASSERT(ggml_adamas_supported_dim(D));
    GGML_ASSERT(a->type == GGML_TYPE_F32 || a->type == GGML_TYPE_F16);

    const float wht_scale = 1.0f/sqrtf((float) D);

    const int64_t nv  = n_head*n_rows*ne3;
    const int64_t dv  = (nv + params->nth - 1)/params->nth;
    const int64_t iv0 = dv*params->ith;
    const int64_t iv1 = MIN(iv0 + dv, nv);

    float y[GGML_ADAMAS_D_MAX];

    for (int64_t iv = iv0; iv < iv1; ++iv) {
        const int64_t i1 = iv % n_head;
        const int64_t i2 = (iv / n_head) % n_rows;
        const int64_t i3 = iv / (n_head*n_rows);

        const char * src = (const char *) a->data + i1*a->nb[1] + i2*a->nb[2] + i3*a->nb[3];
        if (round_f16) {
            const float * f = (const float *) src;
            for (int d = 0; d < D; ++d) {
                y[d] = GGML_CPU_FP16_TO_FP32(GGML_CPU_FP32_TO_FP16(f[d]));
            }
        } else if (a->type == GGML_TYPE_F32) {
            memcpy(y, src, D*sizeof(float));
        } else {
            const ggml_fp16_t * h = (const ggml_fp16_t *) src;
            for (int d = 0; d < D; ++d) {
                y[d] = GGML_CPU_FP16_TO_FP32(h[d]);
            }
        }

        if (!skip_wht) {
            adamas_fwht(y, D);
            for (int d = 0; d < D; ++d) {
                y[d] *= wht_scale;
            }
        }

        float t = thr;
        if (mode == GGML_ADAMAS_THR_RMS) {
            // double, summed in 32 consecutive blocks of D/32 and then the block sums in order: the CUDA kernel
            // (one warp per vector, a block per lane) sums in this order, so both give the same threshold
            // (products of floats are exact in double, so a fused multiply-add changes nothing)
            const int E = D/32;
            double ss = 0.0;
            for (int l = 0; l < 32; ++l) {
                double p = 0.0;
                for (int i = 0; i < E; ++i) {
                    p += (double) y[l*E + i]*(double) y[l*E + i];
                }
                ss += p;
            }
            t = (float) ((double) thr*sqrt(ss/(double) D));
        }

        uint8_t * out;
        if (!scatter) {
            out = (uint8_t *) dst->data + i1*dst->nb[1] + i2*dst->nb[2] + i3*dst->nb[3];
        } else {
            const int64_t cell = idxs == nullptr ? i2
                : idxs->type == GGML_TYPE_I64 ? ((const int64_t *) idxs->data)[i2]
                : ((const int32_t *) idxs->data)[i2];
            GGML_ASSERT(cell >= 0 && cell < ggml_nrows(dst));
            // dst is a view of the code cache: rows are cells, contiguous within
            const int64_t r1 = cell % dst->ne[1];
            const int64_t r2 = (cell / dst->ne[1]) % dst->ne[2];
            const int64_t r3 = cell / (dst->ne[1]*dst->ne[2]);
            out = (uint8_t *) dst->data + r1*dst->nb[1] + r2*dst->nb[2] + r3*dst->nb[3] + i1*csize;
        }
        adamas_pack(y, D, t, out);
    }
}
