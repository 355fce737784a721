// How far CUDA's RoPE angles (ggml-cuda/rope.cu built with -use_fast_math: powf, cosf, sinf become the fast
// intrinsics) and the CPU's (ggml-cpu: theta *= theta_scale in float, libm cosf/sinf) are from the exact
// rotation, for SmolLM2's RoPE (64 dims, base 1e5), by position range. Error: max over dims of
// |(cos, sin) - (cos, sin)_exact| (the rotation's error in radians, about). "patched": rope.cu with patch 0009
// (adamas-rope.cuh: the CPU's float iteration, cos/sin in double), and how many of its (cos, sin) pairs equal
// the CPU's bit for bit.
// nvcc -O3 -arch=sm_90 -use_fast_math ggml_adamas/tests/cuda/rope-angle-probe.cu
#include <cmath>
#include <cstdio>
#include "adamas-rope.cuh"
__global__ void gpu_rope(int n_pos, int n_dims, float theta_scale, float2 * out) {
    const int pos = blockIdx.x*blockDim.x + threadIdx.x;
    if (pos >= n_pos) return;
    for (int i0 = 0; i0 < n_dims; i0 += 2) {
        const float theta = pos*powf(theta_scale, i0/2.0f);
        out[(size_t) pos*(n_dims/2) + i0/2] = make_float2(cosf(theta), sinf(theta));
    }
}
__global__ void gpu_rope_patched(int n_pos, int n_dims, float theta_scale, float2 * out) {
    const int pos = blockIdx.x*blockDim.x + threadIdx.x;
    if (pos >= n_pos) return;
    for (int i0 = 0; i0 < n_dims; i0 += 2) {
        const float theta = adamas_rope_theta(pos, theta_scale, i0/2);
        out[(size_t) pos*(n_dims/2) + i0/2] = make_float2(adamas_rope_cos(theta), adamas_rope_sin(theta));
    }
}
int main() {
    const int n_pos = 32768, n_dims = 64;
    const float base = 100000.0f, theta_scale = powf(base, -2.0f/n_dims);
    float2 * d; cudaMalloc(&d, sizeof(float2)*n_pos*(n_dims/2));
    gpu_rope<<<(n_pos + 255)/256, 256>>>(n_pos, n_dims, theta_scale, d);
    float2 * g = new float2[(size_t) n_pos*(n_dims/2)];
    cudaMemcpy(g, d, sizeof(float2)*n_pos*(n_dims/2), cudaMemcpyDeviceToHost);
    gpu_rope_patched<<<(n_pos + 255)/256, 256>>>(n_pos, n_dims, theta_scale, d);
    float2 * h = new float2[(size_t) n_pos*(n_dims/2)];
    cudaMemcpy(h, d, sizeof(float2)*n_pos*(n_dims/2), cudaMemcpyDeviceToHost);
    const int edges[] = { 0, 512, 2048, 8192, 32768 };
    printf("| positions | GPU max err | GPU mean err | CPU max err | CPU mean err | patched max err | patched mean err | patched == CPU |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int r = 0; r < 4; r++) {
        double gm = 0, gs = 0, cm = 0, cs = 0, pm = 0, ps = 0; long n = 0, same = 0;
        for (int p = edges[r]; p < edges[r + 1]; p++) {
            float theta = (float) p; // the CPU's iteration
            for (int i = 0; i < n_dims/2; i++) {
                const double te = p*pow((double) base, -2.0*i/n_dims);
                const double ce = cos(te), se = sin(te);
                const float2 gv = g[(size_t) p*(n_dims/2) + i];
                const double ge = hypot(gv.x - ce, gv.y - se);
                const double cpe = hypot(cosf(theta) - ce, sinf(theta) - se);
                const float2 hv = h[(size_t) p*(n_dims/2) + i];
                const double pe = hypot(hv.x - ce, hv.y - se);
                same += hv.x == cosf(theta) && hv.y == sinf(theta);
                gm = fmax(gm, ge); gs += ge; cm = fmax(cm, cpe); cs += cpe; pm = fmax(pm, pe); ps += pe; n++;
                theta *= theta_scale;
            }
        }
        printf("| %d-%d | %.2e | %.2e | %.2e | %.2e | %.2e | %.2e | %.2f%% |\n", edges[r], edges[r + 1] - 1,
            gm, gs/n, cm, cs/n, pm, ps/n, 100.0*same/n);
    }
    return 0;
}
