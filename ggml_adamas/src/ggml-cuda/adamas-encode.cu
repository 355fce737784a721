// GGML_OP_ADAMAS_ENCODE on CUDA: one warp per head vector. Lane l holds the D/32 consecutive coordinates
// [l*E, l*E + E); the Walsh-Hadamard butterflies run in registers for h < E and across lanes (shuffles) above,
// stage by stage as the CPU kernel does, so every transformed coordinate is the same float on both. The RMS
// (threshold mode RMS) is summed in double in the CPU kernel's documented order: per lane block, then the 32
// block sums in order. Codes are then bit-identical to the CPU's.

#include "adamas-common.cuh"
#ifndef ADAMAS_CUDA_STANDALONE
#include "adamas-encode.cuh"
#include "ggml-adamas.h"
#endif

struct adamas_encode_args {
    const char * src;                 // F32 or F16 rows [D, n_head, n_rows, ne3]
    bool         src_f16;
    int64_t      snb1, snb2, snb3;    // src strides (bytes)
    int64_t      n_head, n_rows, ne3;

    char *       dst;                 // codes
    int64_t      dnb1, dnb2, dnb3;    // dst strides (bytes)
    // set_rows form: row i2 goes to cell idxs[i2] (or i2 when idxs is null) of the cache view dst
    bool         scatter;
    const void * idxs;
    bool         idxs_i64;
    int64_t      dne1, dne2;          // dst view ne1, ne2 (to split a cell into its coordinates)
    int64_t      n_cells;             // rows of the view (bound of a cell)

    int          mode;                // ggml_adamas_thr_mode: 0 fixed, 1 rms
    float        thr;
    bool         skip_wht;
    bool         round_f16;
    float        wht_scale;           // 1/sqrt(D), computed on the host like the CPU kernel's
};

template <int D>
static __global__ void adamas_encode_kernel(const adamas_encode_args a) {
    constexpr int E = D/WARP_SIZE; // coordinates per lane

    const int     lane = threadIdx.x % WARP_SIZE;
    const int64_t iv   = (int64_t) blockIdx.x*(blockDim.x/WARP_SIZE) + threadIdx.x/WARP_SIZE;
    const int64_t nv   = a.n_head*a.n_rows*a.ne3;
    if (iv >= nv) {
        return; // whole warps only: the shuffles below see full warps
    }
    const int64_t i1 = iv % a.n_head;
    const int64_t i2 = (iv / a.n_head) % a.n_rows;
    const int64_t i3 = iv / (a.n_head*a.n_rows);

    const char * src = a.src + i1*a.snb1 + i2*a.snb2 + i3*a.snb3;
    float x[E];
#pragma unroll
    for (int i = 0; i < E; ++i) {
        if (a.src_f16) {
            x[i] = __half2float(((const half *) src)[lane*E + i]);
        } else {
            x[i] = ((const float *) src)[lane*E + i];
            if (a.round_f16) {
                x[i] = __half2float(__float2half_rn(x[i]));
            }
        }
    }

    if (!a.skip_wht) {
        // butterflies inside the lane
#pragma unroll
        for (int h = 1; h < E; h <<= 1) {
#pragma unroll
            for (int i = 0; i < E; ++i) {
                if ((i & h) == 0) {
                    const float u = x[i];
                    const float v = x[i + h];
                    x[i]     = __fadd_rn(u, v);
                    x[i + h] = __fsub_rn(u, v);
                }
            }
        }
        // across lanes: the partner of lane l at stage h is l ^ (h/E); the lower one keeps u + v, the upper u - v
#pragma unroll
        for (int m = 1; m < WARP_SIZE; m <<= 1) {
            const bool upper = lane & m;
#pragma unroll
            for (int i = 0; i < E; ++i) {
                const float other = __shfl_xor_sync(0xFFFFFFFF, x[i], m);
                x[i] = upper ? __fsub_rn(other, x[i]) : __fadd_rn(x[i], other);
            }
        }
#pragma unroll
        for (int i = 0; i < E; ++i) {
            x[i] = __fmul_rn(x[i], a.wht_scale);
        }
    }

    float t = a.thr;
    if (a.mode == 1) {
        // double, in the order the CPU kernel uses (products of floats are exact in double, so fused or not
        // the sums are the same)
        double p = 0.0;
#pragma unroll
        for (int i = 0; i < E; ++i) {
            p += (double) x[i]*(double) x[i];
        }
        double ss = 0.0;
        for (int l = 0; l < WARP_SIZE; ++l) {
            ss += __shfl_sync(0xFFFFFFFF, p, l);
        }
        t = (float) ((double) a.thr*sqrt(ss/(double) D));
    }

    uint32_t bs[E], bm[E];
#pragma unroll
    for (int i = 0; i < E; ++i) {
        bs[i] = __ballot_sync(0xFFFFFFFF, x[i] > 0.0f);
        bm[i] = __ballot_sync(0xFFFFFFFF, x[i] <= -t || x[i] > t);
    }

    char * out;
    if (!a.scatter) {
        out = a.dst + i1*a.dnb1 + i2*a.dnb2 + i3*a.dnb3;
    } else {
        const int64_t cell = a.idxs == nullptr ? i2
            : a.idxs_i64 ? ((const int64_t *) a.idxs)[i2] : (int64_t) ((const int32_t *) a.idxs)[i2];
        if (cell < 0 || cell >= a.n_cells) {
            return; // out of the cache: nothing to write (the CPU kernel asserts)
        }
        const int64_t r1 = cell % a.dne1;
        const int64_t r2 = (cell / a.dne1) % a.dne2;
        const int64_t r3 = cell / (a.dne1*a.dne2);
        out = a.dst + r1*a.dnb1 + r2*a.dnb2 + r3*a.dnb3 + i1*ADAMAS_CUDA_CODE_SIZE(D);
    }

    // a plane is E 32-bit words; word w holds coordinates [32w, 32w + 32): coordinate e sits in lane e/E,
    // register e%E. Lanes [0, E) write the sign plane, [E, 2E) the magnitude plane.
    if (lane < 2*E) {
        const int   w    = lane < E ? lane : lane - E;
        const bool  sign = lane < E;
        uint32_t word = 0;
#pragma unroll
        for (int b = 0; b < 32; ++b) {
            const uint32_t plane = sign ? bs[b % E] : bm[b % E];
            word |= ((plane >> (w*(32/E) + b/E)) & 1u) << b;
        }
        ((uint32_t *) (out + (sign ? 0 : D/8)))[w] = word;
    }
}

static void adamas_encode_launch(const adamas_encode_args & a, int D, cudaStream_t stream) {
    const int64_t nv = a.n_head*a.n_rows*a.ne3;
    if (nv == 0) {
        return;
    }
    constexpr int warps = 4;
    const dim3 grid((unsigned) ((nv + warps - 1)/warps));
    const dim3 block(warps*WARP_SIZE);
    switch (D) {
        case 32:  adamas_encode_kernel<32> <<<grid, block, 0, stream>>>(a); break;
        case 64:  adamas_encode_kernel<64> <<<grid, block, 0, stream>>>(a); break;
        case 128: adamas_encode_kernel<128><<<grid, block, 0, stream>>>(a); break;
        case 256: adamas_encode_kernel<256><<<grid, block, 0, stream>>>(a); break;
        default:  break; // refused by ggml_cuda_adamas_encode_supported
    }
}

#ifndef ADAMAS_CUDA_STANDALONE

bool ggml_cuda_adamas_encode_supported(const ggml_tensor * op) {
    const ggml_tensor * a = op->src[0];
    const ggml_tensor * idxs = op->src[1];
    return (a->type == GGML_TYPE_F32 || a->type == GGML_TYPE_F16) && ggml_adamas_supported_dim(a->ne[0]) &&
           (idxs == nullptr || idxs->type == GGML_TYPE_I64 || idxs->type == GGML_TYPE_I32);
}

void ggml_cuda_op_adamas_encode(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    const ggml_tensor * src  = dst->src[0];
    const ggml_tensor * idxs = dst->src[1];

    const int D = (int) src->ne[0];
    GGML_ASSERT(ggml_adamas_supported_dim(D));
    GGML_ASSERT(src->type == GGML_TYPE_F32 || src->type == GGML_TYPE_F16);
    GGML_ASSERT(src->nb[0] == ggml_type_size(src->type));

    adamas_encode_args a = {};
    a.src       = (const char *) src->data;
    a.src_f16   = src->type == GGML_TYPE_F16;
    a.snb1      = src->nb[1];
    a.snb2      = src->nb[2];
    a.snb3      = src->nb[3];
    a.n_head    = src->ne[1];
    a.n_rows    = src->ne[2];
    a.ne3       = src->ne[3];
    a.dst       = (char *) dst->data;
    a.dnb1      = dst->nb[1];
    a.dnb2      = dst->nb[2];
    a.dnb3      = dst->nb[3];
    a.scatter   = dst->src[2] != nullptr;
    a.idxs      = idxs ? idxs->data : nullptr;
    a.idxs_i64  = idxs && idxs->type == GGML_TYPE_I64;
    a.dne1      = dst->ne[1];
    a.dne2      = dst->ne[2];
    a.n_cells   = ggml_nrows(dst);
    a.mode      = ggml_get_op_params_i32(dst, 0);
    a.thr       = ggml_get_op_params_f32(dst, 1);
    a.skip_wht  = ggml_get_op_params_i32(dst, 2) != 0;
    a.round_f16 = ggml_get_op_params_i32(dst, 3) != 0 && src->type == GGML_TYPE_F32;
    a.wht_scale = 1.0f/sqrtf((float) D);

    adamas_encode_launch(a, D, ctx.stream());
}

#endif // ADAMAS_CUDA_STANDALONE
