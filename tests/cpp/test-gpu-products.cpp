// Upstream's matrix products for quantized weights on the GPU against the CPU's, column by column (patch 0027).
//
// A decode feeds every activation row through these products; where the GPU's differ from the CPU's by more than
// rounding, a model's logits differ, and a top-budget selection turns small logit differences into other tokens.
// Before patch 0027 CUDA's q8_1 activation blocks carried the float sum of the activations where the CPU carries
// d times the sum of the rounded values, so the Q4_1/Q5_1 dots' offset term no longer cancelled the activations'
// rounding: Q4_1 products 1-3% from the CPU's on SmolLM2's weights. With the patch the two agree to rounding.
//
// For each weight type and batch width (1: the decode's mat-vec kernels; 32: the batched MMQ kernels) the test
// computes W x on the first GPU and on the CPU, and per output column the relative L2 difference
// |gpu - cpu| / |cpu|. It also prints each side's distance from the exact float product (W dequantized, x exact)
// so a reader sees the size of quantization itself. Fails if a column's difference exceeds the type's tolerance.
//
// usage: test-gpu-products [-v]    exits 77 (CTest: skipped) when no GPU device is present
#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

struct product_case {
    ggml_type type;
    double    tol_max;  // the largest column's relative difference allowed
};

// Q4_0 and Q5_0 keep a larger tolerance: the CPU multiplies them with q8_0 activations (no block sum), CUDA with
// q8_1's half-precision block sum, whose rounding (2^-11 relative) the offset term -8 (-16) x sum magnifies.
static const product_case k_cases[] = {
    {GGML_TYPE_Q4_0, 5e-3}, {GGML_TYPE_Q4_1, 1e-3}, {GGML_TYPE_Q5_0, 5e-3},
    {GGML_TYPE_Q5_1, 1e-3}, {GGML_TYPE_Q8_0, 1e-3},
};

// W (n_out x n_in, quantized) times x (n_in x n_cols, F32) on one backend; y: n_cols columns of n_out
static bool run_product(ggml_backend_t backend, ggml_type type, const std::vector<uint8_t> & wq, const std::vector<float> & x,
                        int n_in, int n_out, int n_cols, std::vector<float> & y) {
    ggml_init_params ip = {ggml_tensor_overhead() * 8 + ggml_graph_overhead(), nullptr, true};
    ggml_context * ctx = ggml_init(ip);
    ggml_tensor * w = ggml_new_tensor_2d(ctx, type, n_in, n_out);
    ggml_tensor * a = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n_in, n_cols);
    ggml_tensor * out = ggml_mul_mat(ctx, w, a);
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, backend);
    if (!buf) {
        ggml_free(ctx);
        return false;
    }
    ggml_backend_tensor_set(w, wq.data(), 0, wq.size());
    ggml_backend_tensor_set(a, x.data(), 0, x.size() * sizeof(float));
    const bool ok = ggml_backend_graph_compute(backend, gf) == GGML_STATUS_SUCCESS;
    y.resize((size_t) n_out * n_cols);
    if (ok) {
        ggml_backend_tensor_get(out, y.data(), 0, y.size() * sizeof(float));
    }
    ggml_backend_buffer_free(buf);
    ggml_free(ctx);
    return ok;
}

static double rel_l2(const float * a, const float * b, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; ++i) {
        num += ((double) a[i] - b[i]) * ((double) a[i] - b[i]);
        den += (double) b[i] * b[i];
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

int main(int argc, char ** argv) {
    const bool verbose = argc > 1 && strcmp(argv[1], "-v") == 0;
    ggml_backend_dev_t gpu_dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_GPU);
    if (!gpu_dev) {
        printf("no GPU device: skipped\n");
        return 77;
    }
    ggml_backend_t gpu = ggml_backend_dev_init(gpu_dev, nullptr);
    ggml_backend_t cpu = ggml_backend_cpu_init();
    if (!gpu || !cpu) {
        fprintf(stderr, "could not start the GPU or CPU backend\n");
        return 1;
    }
    printf("GPU: %s (%s)\n", ggml_backend_dev_name(gpu_dev), ggml_backend_dev_description(gpu_dev));

    // SmolLM2's shapes: hidden 576, FFN 1536
    const int shapes[][2] = {{576, 192}, {1536, 576}};
    const int widths[]    = {1, 32};
    int n_failed = 0, n_checks = 0;
    std::mt19937 rng(1234);
    for (const auto & sh : shapes) {
        const int n_in = sh[0], n_out = sh[1];
        // weights like a trained layer's (small, zero-centred); activations with a non-zero mean per block, as
        // after a norm with a learned scale: the offset term of the Q4_1/Q5_1 dots matters then
        std::normal_distribution<float> wd(0.0f, 0.02f);
        std::vector<float> wf((size_t) n_in * n_out);
        for (float & v : wf) v = wd(rng);
        for (const int n_cols : widths) {
            std::normal_distribution<float> xd(0.3f, 1.0f);
            std::vector<float> x((size_t) n_in * n_cols);
            for (float & v : x) v = xd(rng);
            for (const product_case & pc : k_cases) {
                std::vector<uint8_t> wq(ggml_row_size(pc.type, n_in) * n_out);
                ggml_quantize_chunk(pc.type, wf.data(), wq.data(), 0, n_out, n_in, nullptr);
                // the exact product of the dequantized weights, in double
                std::vector<float> wdq((size_t) n_in * n_out);
                ggml_get_type_traits(pc.type)->to_float(wq.data(), wdq.data(), (int64_t) n_in * n_out);
                std::vector<float> exact((size_t) n_out * n_cols);
                for (int c = 0; c < n_cols; ++c) {
                    for (int r = 0; r < n_out; ++r) {
                        double s = 0;
                        for (int k = 0; k < n_in; ++k) s += (double) wdq[(size_t) r * n_in + k] * x[(size_t) c * n_in + k];
                        exact[(size_t) c * n_out + r] = (float) s;
                    }
                }
                std::vector<float> yg, yc;
                if (!run_product(gpu, pc.type, wq, x, n_in, n_out, n_cols, yg) ||
                    !run_product(cpu, pc.type, wq, x, n_in, n_out, n_cols, yc)) {
                    fprintf(stderr, "FAIL %s %dx%d x %d: a backend could not compute the product\n",
                            ggml_type_name(pc.type), n_out, n_in, n_cols);
                    ++n_failed;
                    continue;
                }
                double dmax = 0, dsum = 0, gex = 0, cex = 0;
                for (int c = 0; c < n_cols; ++c) {
                    const size_t o = (size_t) c * n_out;
                    const double d = rel_l2(yg.data() + o, yc.data() + o, n_out);
                    dmax = std::fmax(dmax, d);
                    dsum += d;
                    gex += rel_l2(yg.data() + o, exact.data() + o, n_out);
                    cex += rel_l2(yc.data() + o, exact.data() + o, n_out);
                }
                ++n_checks;
                const bool ok = std::isfinite(dmax) && dmax <= pc.tol_max;
                n_failed += !ok;
                if (!ok || verbose) {
                    printf("%s %-5s %4dx%-4d x %2d: GPU vs CPU max %.2e mean %.2e (tol %.0e); from exact GPU %.2e CPU %.2e\n",
                           ok ? "ok  " : "FAIL", ggml_type_name(pc.type), n_out, n_in, n_cols, dmax, dsum / n_cols,
                           pc.tol_max, gex / n_cols, cex / n_cols);
                }
            }
        }
    }
    printf("%d checks, %d failed\n", n_checks, n_failed);
    ggml_backend_free(gpu);
    ggml_backend_free(cpu);
    return n_failed ? 1 : 0;
}
