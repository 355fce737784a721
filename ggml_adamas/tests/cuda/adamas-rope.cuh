#pragma once
// adamas_gguf: RoPE angles computed as ggml-cpu computes them, for rope-angle-probe.cu. Patch 0009 put these
// into rope.cu (2026-12-04) and was withdrawn: on SmolLM2 it moved the GPU's dense perplexity 1.1% away from the
// CPU's (docs/perf-notes.md). Why it was wanted:
//
// ggml-cuda builds with -use_fast_math, so rope.cu's powf, cosf and sinf become the fast intrinsics; for
// positions in the thousands their rotations are about 2.5x further from exact than the CPU's
// (ggml_adamas/tests/cuda/rope-angle-probe.cu). A softmax over every cell hardly notices; a top-budget
// selection does: the GPU then picks other cells than the CPU from the same weights. ggml-cpu forms the
// angle of pair i as ((pos * s) * s) ... (i multiplications by theta_scale, in float) and calls libm's
// cosf/sinf; the same float multiplications here give the same angle bit for bit, and cos/sin in double
// rounded to float agree with libm's to the last bit or one ulp.

// the angle of rotated pair `pair` at position `pos` (ggml_rope_cache_init's iteration)
static __device__ __forceinline__ float adamas_rope_theta(const float pos, const float theta_scale, const int pair) {
    float theta = pos;
    for (int i = 0; i < pair; ++i) {
        theta = __fmul_rn(theta, theta_scale); // never contracted into anything else: the CPU rounds each product
    }
    return theta;
}

static __device__ __forceinline__ float adamas_rope_cos(const float theta) { return (float) cos((double) theta); }
static __device__ __forceinline__ float adamas_rope_sin(const float theta) { return (float) sin((double) theta); }
