// Scratch probe (not built by CMake): the Adamas nodes of SmolLM2's sparse decode step, laid out as llama.cpp's
// cache holds them, timed without the rest of the model. Per layer (28 of them, each its own K/V/codes):
//   qc = encode(q) ; idx = select(qc, kc, mask, pool = rerank*budget, head) ; out = attn_rerank(q, k, v, mask, idx, budget)
// ns streams of n_kv cells each (one sequence per stream, first `depth` visible), 9 query / 3 KV heads, D 64, F16.
// usage: probe-layers [threads] [ns] [depth] [budget] [rerank] [layers] [reps]
#include "ggml.h"
#include "ggml-cpu.h"
#include "ggml-adamas.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>
#include <sys/mman.h>

int main(int argc, char ** argv) {
    const int nth     = argc > 1 ? atoi(argv[1]) : 2;
    const int ns      = argc > 2 ? atoi(argv[2]) : 4;
    const int depth   = argc > 3 ? atoi(argv[3]) : 4096;
    const int budget  = argc > 4 ? atoi(argv[4]) : 64;
    const int rerank  = argc > 5 ? atoi(argv[5]) : 4;
    const int nl      = argc > 6 ? atoi(argv[6]) : 28;
    const int reps    = argc > 7 ? atoi(argv[7]) : 50;
    const int D = 64, NH = 9, NKV = 3;
    const int n_kv = (depth + 16 + 255)/256*256;
    const int kv_size = n_kv;

    ggml_time_init();
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> U(-1, 1);

    const size_t per_layer = (size_t) 2*D*NKV*kv_size*ns*2 + (size_t) 2*NKV*D/4*kv_size*ns + (size_t) 4*D*NKV*kv_size*ns + 1024*1024;
    const size_t mem = (per_layer*nl + (size_t) n_kv*ns*2 + 64*1024*1024 + (2u << 20) - 1) & ~(size_t) ((2u << 20) - 1);
    void * buf = aligned_alloc(2u << 20, mem);
    if (getenv("HUGE")) madvise(buf, mem, MADV_HUGEPAGE);
    ggml_init_params ip = { mem, buf, false };
    ggml_context * ctx = ggml_init(ip);

    ggml_tensor * mask = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, n_kv, 1, 1, ns);
    for (int s = 0; s < ns; s++) {
        ggml_fp16_t * m = (ggml_fp16_t *) mask->data + (size_t) s*n_kv;
        for (int c = 0; c < n_kv; c++) m[c] = ggml_fp32_to_fp16(c < depth ? 0.0f : -INFINITY);
    }
    std::vector<ggml_tensor *> outs, qcs, idxs;
    ggml_cgraph * gf = ggml_new_graph_custom(ctx, 4096, false);
    for (int l = 0; l < nl; l++) {
        ggml_tensor * kc_all = ggml_new_tensor_3d(ctx, GGML_TYPE_F16, D*NKV, kv_size, ns);
        ggml_tensor * vc_all = ggml_new_tensor_3d(ctx, GGML_TYPE_F16, D*NKV, kv_size, ns);
        ggml_tensor * codes  = ggml_new_tensor_3d(ctx, GGML_TYPE_I8, NKV*D/4, kv_size, ns);
        ggml_tensor * qcur   = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, D, NH, ns);
        for (ggml_tensor * t : { kc_all, vc_all }) {
            ggml_fp16_t * p = (ggml_fp16_t *) t->data;
            for (int64_t i = 0; i < ggml_nelements(t); i++) p[i] = ggml_fp32_to_fp16(U(rng));
        }
        for (int64_t i = 0; i < ggml_nelements(qcur); i++) ((float *) qcur->data)[i] = U(rng);
        // codes of K, encoded once (untimed)
        {
            ggml_tensor * kf = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, D, NKV, kv_size, ns);
            ggml_fp16_t * p = (ggml_fp16_t *) kc_all->data;
            for (int64_t i = 0; i < ggml_nelements(kf); i++) ((float *) kf->data)[i] = ggml_fp16_to_fp32(p[i]);
            ggml_tensor * e = ggml_adamas_encode(ctx, kf, GGML_ADAMAS_THR_RMS, 1.0f, false);
            ggml_cgraph * g = ggml_new_graph(ctx);
            ggml_build_forward_expand(g, e);
            ggml_graph_compute_with_ctx(ctx, g, nth);
            memcpy(codes->data, e->data, ggml_nbytes(codes));
        }
        ggml_tensor * k  = ggml_view_4d(ctx, kc_all, D, NKV, n_kv, ns, ggml_row_size(GGML_TYPE_F16, D), kc_all->nb[1], kc_all->nb[2], 0);
        ggml_tensor * v  = ggml_view_4d(ctx, vc_all, D, NKV, n_kv, ns, ggml_row_size(GGML_TYPE_F16, D), vc_all->nb[1], vc_all->nb[2], 0);
        ggml_tensor * q4 = ggml_view_4d(ctx, qcur, D, NH, 1, ns, qcur->nb[1], qcur->nb[2], qcur->nb[2], 0);
        ggml_tensor * qc = ggml_adamas_encode(ctx, q4, GGML_ADAMAS_THR_RMS, 0.5f, false);
        ggml_tensor * kcv = ggml_view_4d(ctx, codes, D/4, NKV, n_kv, ns, D/4, codes->nb[1], codes->nb[2], 0);
        ggml_tensor * qp = ggml_permute(ctx, q4, 0, 2, 1, 3);
        ggml_tensor * kp = ggml_permute(ctx, k, 0, 2, 1, 3);
        ggml_tensor * vp = ggml_permute(ctx, v, 0, 2, 1, 3);
        ggml_tensor * idx = ggml_adamas_select(ctx, qc, kcv, mask, budget*rerank, GGML_ADAMAS_SELECT_HEAD);
        ggml_tensor * out = rerank > 1 ? ggml_adamas_attn_rerank(ctx, qp, kp, vp, mask, idx, 0.125f, 0.0f, budget, 0)
                                       : ggml_adamas_attn(ctx, qp, kp, vp, mask, idx, 0.125f, 0.0f);
        ggml_build_forward_expand(gf, out);
        outs.push_back(out); qcs.push_back(qc); idxs.push_back(idx);
    }
    ggml_threadpool_params tpp = ggml_threadpool_params_default(nth);
    ggml_threadpool * tp = ggml_threadpool_new(&tpp);
    auto time_graph = [&](ggml_cgraph * g) {
        ggml_cplan p = ggml_graph_plan(g, nth, tp);
        std::vector<uint8_t> work(p.work_size);
        p.work_data = work.data();
        ggml_graph_compute(g, &p);
        std::vector<double> ts;
        for (int r = 0; r < reps; r++) {
            const int64_t t0 = ggml_time_us();
            ggml_graph_compute(g, &p);
            ts.push_back((ggml_time_us() - t0)*1e-3);
        }
        std::sort(ts.begin(), ts.end());
        return ts[ts.size()/2];
    };
    auto sub = [&](const std::vector<ggml_tensor *> & nodes) {
        ggml_cgraph * g = ggml_new_graph_custom(ctx, 4096, false);
        for (ggml_tensor * n : nodes) ggml_graph_add_node(g, n);
        return g;
    };
    const double t_all = time_graph(gf);
    const double t_enc = time_graph(sub(qcs));
    const double t_sel = time_graph(sub(idxs));
    const double t_att = time_graph(sub(outs));
    // a checksum of the outputs, to compare builds (bitwise)
    uint64_t h = 1469598103934665603ull;
    for (ggml_tensor * o : outs) {
        const uint8_t * p = (const uint8_t *) o->data;
        for (size_t i = 0; i < ggml_nbytes(o); i++) h = (h ^ p[i])*1099511628211ull;
    }
    for (ggml_tensor * o : idxs) {
        const uint8_t * p = (const uint8_t *) o->data;
        for (size_t i = 0; i < ggml_nbytes(o); i++) h = (h ^ p[i])*1099511628211ull;
    }
    printf("threads %d, %d streams x depth %d (n_kv %d), budget %d rerank %d, %d layers: all %.3f ms | encode %.3f select %.3f attn %.3f ms | per layer all %.1f us | hash %016llx\n",
           nth, ns, depth, n_kv, budget, rerank, nl, t_all, t_enc, t_sel, t_att, t_all*1e3/nl, (unsigned long long) h);
    if (getenv("HUGE")) { FILE * f = fopen("/proc/self/smaps_rollup", "r"); char line[256]; while (f && fgets(line, sizeof line, f)) if (strstr(line, "AnonHuge")) fputs(line, stdout); if (f) fclose(f); }
    ggml_threadpool_free(tp);
    ggml_free(ctx);
    return 0;
}
