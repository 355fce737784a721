// adamas_gguf: key codes beside the K cache and the Adamas decode step (see llama-adamas-kv.h).

#include "llama-adamas-kv.h"

#include "llama-batch.h"
#include "llama-context.h"
#include "llama-graph.h"
#include "llama-hparams.h"
#include "llama-impl.h"
#include "llama-kv-cache.h"
#include "llama-kv-cache-iswa.h"
#include "llama-model.h"

#include "ggml-adamas.h"
#include "ggml-backend.h"
#include "ggml-cpp.h"

#include <cstring>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

// ---- eligibility ------------------------------------------------------------------------------------------

// Why Adamas cannot code the keys of layer il (NULL: it can).
static const char * adamas_layer_reason(const llama_hparams & hp, uint32_t il) {
    if (!ggml_adamas_supported_dim(hp.n_embd_head_k(il))) {
        return "head_dim is not a power of two in [32, 256]";
    }
    if (hp.is_swa(il)) {
        return "sliding-window layer";
    }
    if (hp.use_alibi) {
        return "ALiBi attention";
    }
    if (hp.is_mla()) {
        return "MLA attention";
    }
    return nullptr;
}

// The select and attention of a sparse step: the budget nearest by codes, (rerank > 1) a pool of
// rerank*budget of which the exact logits keep the budget, or (EXACT, the reference) a pool of every cell of
// the view (masked ones are -1 slots), so that the exact logits keep each query head's true top budget; the
// pool is in code rank order, so equal logits keep the better code rank. The select ranks the forced cells
// (sinks, recent tokens) first, so the rerank keeps its first n_sink + n_recent slots whatever their logits.
// cells (or NULL): each query's candidate cells (its own sequence's in a unified cache); the exact pool is then
// every listed cell.
static ggml_tensor * adamas_select_attn(ggml_context * ctx, const llama_adamas_params & p, int32_t budget,
        ggml_tensor * qc, ggml_tensor * kc, ggml_tensor * sel_mask, ggml_tensor * cells, ggml_tensor * q, ggml_tensor * k,
        ggml_tensor * v, ggml_tensor * mask, float scale, float softcap, ggml_tensor ** idx_out) {
    const bool exact = p.select_mode == LLAMA_ADAMAS_SELECT_EXACT;
    const int32_t pool = exact ? (int32_t) (cells ? cells->ne[0] : kc->ne[2]) : budget*p.rerank;
    const auto mode = exact ? GGML_ADAMAS_SELECT_HEAD : (ggml_adamas_select_mode) p.select_mode;
    ggml_tensor * idx = cells ? ggml_adamas_select_cells(ctx, qc, kc, sel_mask, cells, pool, mode)
                              : ggml_adamas_select(ctx, qc, kc, sel_mask, pool, mode);
    if (idx_out) {
        *idx_out = idx;
    }
    const int32_t n_keep = std::min(budget, pool);
    return exact || p.rerank > 1
        ? ggml_adamas_attn_rerank(ctx, q, k, v, mask, idx, scale, softcap, n_keep, std::min(n_keep, p.n_sink + llama_adamas_n_recent(&p)))
        : ggml_adamas_attn(ctx, q, k, v, mask, idx, scale, softcap);
}

// Why the device holding a layer's cache cannot run the Adamas ops at these parameters (NULL: it can). The
// scheduler would otherwise run an unsupported op on the CPU and copy the whole cache there every token, so
// the ops are built once on probe tensors of the layer's shapes and types and put to the device.
static const char * adamas_device_reason(const llama_adamas_params & p, const llama_hparams & hp, uint32_t il,
                                         const ggml_tensor * c, const ggml_tensor * k, const ggml_tensor * v) {
    if (!c->buffer || ggml_backend_buffer_is_host(c->buffer)) {
        return nullptr; // the CPU backend runs every Adamas op
    }
    ggml_backend_dev_t dev = ggml_backend_buft_get_device(ggml_backend_buffer_get_type(c->buffer));
    if (!dev) {
        return "the KV cache is on a device without Adamas kernels";
    }
    const int64_t D      = hp.n_embd_head_k(il);
    const int64_t n_head = hp.n_head(il);
    const int64_t n_hkv  = hp.n_head_kv(il);
    // the exact reference's pool is every cell of the view, up to the whole cache
    const int64_t n_kv   = p.select_mode == LLAMA_ADAMAS_SELECT_EXACT ? std::max<int64_t>(256, c->ne[1]) : 256;

    ggml_init_params ip = { 24*ggml_tensor_overhead(), nullptr, /*no_alloc*/ true };
    ggml_context_ptr ctx(ggml_init(ip));
    ggml_context * c0 = ctx.get();

    const auto thr_mode = (ggml_adamas_thr_mode) p.thr_mode;
    ggml_tensor * q     = ggml_new_tensor_3d(c0, GGML_TYPE_F32, D, n_head, 1);
    ggml_tensor * kcur  = ggml_new_tensor_3d(c0, GGML_TYPE_F32, D, n_hkv, 1);
    ggml_tensor * idxs  = ggml_new_tensor_1d(c0, GGML_TYPE_I64, 1);
    ggml_tensor * codes = ggml_new_tensor_2d(c0, GGML_TYPE_I8, n_hkv*GGML_ADAMAS_CODE_SIZE(D), n_kv);
    ggml_tensor * kc    = ggml_new_tensor_3d(c0, GGML_TYPE_I8, GGML_ADAMAS_CODE_SIZE(D), n_hkv, n_kv);
    ggml_tensor * mask  = ggml_new_tensor_2d(c0, GGML_TYPE_F16, n_kv, 1);
    ggml_tensor * kk    = ggml_new_tensor_3d(c0, k->type, D, n_kv, n_hkv);
    ggml_tensor * vv    = ggml_new_tensor_3d(c0, v->type, hp.n_embd_head_v(il), n_kv, n_hkv);
    ggml_tensor * qp    = ggml_new_tensor_3d(c0, GGML_TYPE_F32, D, 1, n_head);

    ggml_tensor * enc_k = ggml_adamas_encode_set_rows(c0, codes, kcur, idxs, thr_mode, p.thr_k, false);
    ggml_tensor * enc_q = ggml_adamas_encode(c0, q, thr_mode, p.thr_q, false);
    ggml_tensor * cells = ggml_new_tensor_3d(c0, GGML_TYPE_I32, n_kv/2, 1, 1); // a unified cache's candidate lists
    ggml_tensor * sel   = nullptr;
    ggml_tensor * sel_c = nullptr;
    ggml_tensor * attn  = adamas_select_attn(c0, p, std::max(1, p.budget), enc_q, kc, mask, nullptr, qp, kk, vv, mask, 1.0f, 0.0f, &sel);
    ggml_tensor * attn_c = adamas_select_attn(c0, p, std::max(1, p.budget), enc_q, kc, mask, cells, qp, kk, vv, mask, 1.0f, 0.0f, &sel_c);

    for (ggml_tensor * op : { enc_k, enc_q, sel, attn, sel_c, attn_c }) {
        if (!ggml_backend_dev_supports_op(dev, op)) {
            static thread_local std::string msg;
            msg = std::string(ggml_backend_dev_name(dev)) + " cannot run " + ggml_op_desc(op) + " for this layer (K " +
                  ggml_type_name(k->type) + ", V " + ggml_type_name(v->type) + ", budget " + std::to_string(p.budget) +
                  (p.select_mode == LLAMA_ADAMAS_SELECT_EXACT ? std::string(", select exact") :
                   p.rerank > 1 ? ", rerank " + std::to_string(p.rerank) : std::string()) + ")";
            // an RPC device knows why (no Adamas on its server, another wire version, ...): ggml-rpc-adamas.cpp
            using reason_fn = const char * (*)(ggml_backend_dev_t);
            ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
            auto rpc_reason = reg ? (reason_fn) ggml_backend_reg_get_proc_address(reg, "ggml_backend_rpc_adamas_reason") : nullptr;
            if (const char * why = rpc_reason ? rpc_reason(dev) : nullptr) {
                msg += std::string(": ") + why;
            }
            return msg.c_str();
        }
    }
    return nullptr;
}

// Codes c on -sm tensor's meta device (ggml-backend-meta.cpp), which splits each graph node over its devices by a
// rule per op: it has none for ours and aborts on them (even on a view for a copy), though its supports_op says yes
// (it asks the devices under it), so the device probe would not catch it.
static bool adamas_tensor_split(const llama_model & model, const ggml_tensor * c) {
    return model.split_mode() == LLAMA_SPLIT_MODE_TENSOR && c->buffer && !ggml_backend_buffer_is_host(c->buffer);
}

// Why Adamas cannot use layer il's cache (codes c, K, V) in a context with these parameters (NULL: it can).
static const char * adamas_cache_reason(const llama_model & model, const llama_cparams & cp, const llama_hparams & hp,
                                        uint32_t il, const ggml_tensor * c, const ggml_tensor * k, const ggml_tensor * v) {
    if (!cp.flash_attn) {
        return "flash attention is off (Adamas reads V untransposed)";
    }
    if (adamas_tensor_split(model, c)) {
        return "split mode tensor (-sm tensor): the Adamas ops have no rule to split over the devices of a "
               "tensor-parallel KV cache; use -sm layer";
    }
    return adamas_device_reason(cp.adamas, hp, il, c, k, v);
}

// A coded layer whose device runs the Adamas ops. The others decode dense and never read their codes, so nothing
// rebuilds or checks those: an encode put to such a device would stop the scheduler (a cache tensor lives there).
static bool adamas_layer_coded(const llama_context * lctx, const llama_hparams & hp, uint32_t il,
                               const ggml_tensor * c, const ggml_tensor * k, const ggml_tensor * v) {
    return c && adamas_cache_reason(lctx->get_model(), lctx->get_cparams(), hp, il, c, k, v) == nullptr;
}

ggml_tensor * llama_adamas_kv::new_codes(ggml_context * ctx, const llama_hparams & hp, uint32_t il, uint32_t kv_size, uint32_t n_stream) {
    if (adamas_layer_reason(hp, il) != nullptr) {
        return nullptr;
    }
    const int64_t row = hp.n_head_kv(il)*GGML_ADAMAS_CODE_SIZE(hp.n_embd_head_k(il));
    ggml_tensor * c = ggml_new_tensor_3d(ctx, GGML_TYPE_I8, row, kv_size, n_stream);
    ggml_format_name(c, "cache_adamas_l%d", il);
    return c;
}

void llama_adamas_kv::log_size(const llama_kv_cache & kv) {
    size_t bytes = 0;
    int n = 0;
    for (const auto & layer : kv.layers) {
        if (layer.c) {
            bytes += ggml_nbytes(layer.c);
            n++;
        }
    }
    if (n > 0) {
        LLAMA_LOG_INFO("%s: Adamas key codes: %7.2f MiB (%d layers, in the K buffers)\n", __func__,
                bytes/(1024.0*1024.0), n);
    }
}

void llama_adamas_kv::copy_stream(const llama_kv_cache & kv, uint32_t ssrc, uint32_t sdst) {
    bool stale = kv.adamas.is_stale(ssrc);
    // one stream's codes as a view each side, copied by the buffer's backend (as upstream copies K and V
    // streams): on a GPU or an rpc-server the bytes stay there instead of travelling through the host
    ggml_init_params ip = { 2*kv.layers.size()*ggml_tensor_overhead(), nullptr, /*no_alloc*/ true };
    ggml_context_ptr ctx(ggml_init(ip));
    for (const auto & layer : kv.layers) {
        ggml_tensor * c = layer.c;
        if (!c) {
            continue;
        }
        if (adamas_tensor_split(kv.model, c)) {
            stale = true; // never read there (adamas_cache_reason); the stream is re-encoded if it ever is
            continue;
        }
        ggml_tensor * src = ggml_view_2d(ctx.get(), c, c->ne[0], c->ne[1], c->nb[1], ssrc*c->nb[2]);
        ggml_tensor * dst = ggml_view_2d(ctx.get(), c, c->ne[0], c->ne[1], c->nb[1], sdst*c->nb[2]);
        if (ggml_backend_view_init(src) != GGML_STATUS_SUCCESS || ggml_backend_view_init(dst) != GGML_STATUS_SUCCESS) {
            GGML_ABORT("adamas: cannot view the key codes of layer %d", (int) layer.il);
        }
        ggml_backend_tensor_copy(src, dst);
    }
    kv.adamas.set_stale(sdst, stale);
}

// ---- re-encoding after K changed under the codes ---------------------------------------------------------

// Encodes the keys of cells [0, n_cells) of stream s of layer K cache k into its codes c; returns the write.
// Quantized K is dequantized to F32 first, which is what the write path encodes (adamas_write_codes), so the
// codes are the same bits; a rotated cache (attn_rot_k, nrot == D for power-of-two D) already holds H k.
static ggml_tensor * adamas_recode(ggml_context * ctx, ggml_tensor * c, ggml_tensor * k, int64_t D, int64_t nhk,
        uint32_t s, int64_t n_cells, const llama_adamas_params & p, bool skip_wht) {
    ggml_tensor * ks = ggml_view_3d(ctx, k, D, nhk, n_cells, ggml_row_size(k->type, D), k->nb[1], s*k->nb[2]);
    if (k->type != GGML_TYPE_F32 && k->type != GGML_TYPE_F16) {
        ks = ggml_cast(ctx, ks, GGML_TYPE_F32);
    }
    ggml_tensor * cs = ggml_view_2d(ctx, c, c->ne[0], n_cells, c->nb[1], s*c->nb[2]);
    return ggml_adamas_encode_set_rows(ctx, cs, ks, nullptr, (ggml_adamas_thr_mode) p.thr_mode, p.thr_k, skip_wht);
}

void llama_adamas_kv::invalidate(const llama_kv_cache & kv, int32_t strm) {
    for (const auto & layer : kv.layers) {
        if (layer.c) {
            for (uint32_t s = 0; s < kv.n_stream; ++s) {
                if (strm < 0 || (uint32_t) strm == s) {
                    kv.adamas.set_stale(s, true);
                }
            }
            return;
        }
    }
}

// A stale stream past the budget: update() re-encodes it before the step. One within the budget is left
// stale (its steps are dense); the graph of the step that first takes it past the budget rebuilds it.
bool llama_adamas_kv::update_stream(const llama_kv_cache & kv, uint32_t s, int32_t budget) {
    return kv.adamas.is_stale(s) && kv.v_cells[s].get_used() > (uint32_t) budget;
}

bool llama_adamas_kv::update_pending(const llama_kv_cache & kv, const llama_context * lctx) {
    if (!lctx || lctx->get_cparams().adamas.budget <= 0) {
        return false;
    }
    for (uint32_t s = 0; s < kv.n_stream; ++s) {
        if (update_stream(kv, s, lctx->get_cparams().adamas.budget)) {
            for (const auto & layer : kv.layers) {
                if (adamas_layer_coded(lctx, kv.hparams, layer.il, layer.c, layer.k, layer.v)) {
                    return true;
                }
            }
            return false;
        }
    }
    return false;
}

bool llama_adamas_kv::update(llama_kv_cache & kv, llama_context * lctx) {
    if (!update_pending(kv, lctx) || kv.other) {
        return false;
    }
    const llama_adamas_params & p = lctx->get_cparams().adamas;

    std::vector<uint32_t> strms;
    for (uint32_t s = 0; s < kv.n_stream; ++s) {
        if (update_stream(kv, s, p.budget)) {
            strms.push_back(s);
        }
    }

    auto * sched = lctx->get_sched();
    ggml_backend_sched_reset(sched);
    auto * res = lctx->get_gf_res_reserve();
    res->reset();
    ggml_context * ctx = res->get_ctx();
    ggml_cgraph  * gf  = res->get_gf();

    for (const auto & layer : kv.layers) {
        if (!adamas_layer_coded(lctx, kv.hparams, layer.il, layer.c, layer.k, layer.v)) {
            continue;
        }
        const int64_t D   = kv.hparams.n_embd_head_k(layer.il);
        const int64_t nhk = kv.hparams.n_head_kv(layer.il);
        for (uint32_t s : strms) {
            // only the used part of the stream needs codes
            ggml_build_forward_expand(gf, adamas_recode(ctx, layer.c, layer.k, D, nhk, s, kv.v_cells[s].used_max_p1(),
                    p, kv.attn_rot_k));
        }
    }

    if (!ggml_backend_sched_alloc_graph(sched, gf)) {
        LLAMA_LOG_ERROR("%s: failed to allocate the Adamas re-encode graph\n", __func__);
        return false;
    }
    res->set_inputs(nullptr);
    if (lctx->graph_compute(gf, false) != GGML_STATUS_SUCCESS) {
        LLAMA_LOG_ERROR("%s: failed to re-encode the Adamas key codes\n", __func__);
        return false;
    }
    for (uint32_t s : strms) {
        kv.adamas.set_stale(s, false);
    }
    LLAMA_LOG_DEBUG("%s: re-encoded the Adamas key codes of %zu streams\n", __func__, strms.size());
    return true;
}

// ---- splitting a batch: decode tokens apart from prompt tokens ------------------------------------------------

void llama_adamas_kv::set_budget(const llama_context * lctx, int32_t budget) {
    if (const llama_kv_cache * kv = kv_of(lctx)) {
        kv->adamas.budget = budget;
    }
}

void llama_adamas_kv::split_decode(const llama_kv_cache & kv, llama_batch_allocr & balloc, uint32_t n_ubatch, bool sequential,
                                   std::vector<llama_ubatch> & ubatches) {
    const int32_t budget = kv.adamas.budget;
    // coupled sequences (a token in several) keep upstream's split; so does a model Adamas does not serve
    if (budget <= 0 || balloc.has_cpl || !kv.adamas.reason.empty() || balloc.get_n_used() > 0) {
        return;
    }
    const llama_batch & b = balloc.batch;
    std::vector<int32_t> n_of(balloc.n_seq_max, 0); // tokens of each sequence in the batch
    bool multi = false; // some sequence takes several tokens (else upstream's split already gives decode ubatches)
    for (int32_t i = 0; i < b.n_tokens; ++i) {
        multi = ++n_of[b.seq_id[i][0]] > 1 || multi;
    }
    if (!multi) {
        return; // the common decode step: nothing to split, no cache lookups
    }
    // a decode token: its sequence's only one in the batch, and the sequence holds more than the budget with it
    // (its select then chooses among its cells; within the budget the step would be dense anyway)
    auto is_decode = [&](int32_t i) {
        const llama_seq_id s = b.seq_id[i][0];
        if (n_of[s] != 1) {
            return false;
        }
        const llama_pos p0 = kv.seq_pos_min(s), p1 = kv.seq_pos_max(s);
        return (p0 < 0 ? 0 : p1 - p0 + 1) + 1 > budget;
    };
    std::vector<int32_t> dec, rest;
    for (int32_t i = 0; i < b.n_tokens; ++i) {
        (is_decode(i) ? dec : rest).push_back(i);
    }
    if (dec.empty()) {
        return;
    }
    // ubatches of idxs[i0, i1), at most n_ubatch tokens each
    auto add = [&](const std::vector<int32_t> & idxs, size_t i0, size_t i1, bool equal_seqs) {
        for (; i0 < i1; i0 += n_ubatch) {
            std::vector<int32_t> part(idxs.begin() + i0, idxs.begin() + std::min<size_t>(i1, i0 + n_ubatch));
            for (int32_t i : part) {
                balloc.used[i] = true;
                balloc.n_used++;
            }
            ubatches.push_back(balloc.ubatch_add(part, (uint32_t) part.size(), equal_seqs));
        }
    };
    if (!sequential) {
        // one stream: the decode tokens, then the others in batch order
        add(dec, 0, dec.size(), false);
        add(rest, 0, rest.size(), false);
        return;
    }
    // a stream per sequence: a ubatch views a range of streams, so each run of consecutive sequence ids is one
    std::sort(dec.begin(), dec.end(), [&](int32_t x, int32_t y) { return b.seq_id[x][0] < b.seq_id[y][0]; });
    for (size_t r0 = 0; r0 < dec.size(); ) {
        size_t r1 = r0 + 1;
        while (r1 < dec.size() && b.seq_id[dec[r1]][0] == b.seq_id[dec[r1 - 1]][0] + 1) {
            r1++;
        }
        add(dec, r0, r1, true);
        r0 = r1;
    }
}

const llama_kv_cache * llama_adamas_kv::kv_of(const llama_context * lctx) {
    llama_memory_i * mem = lctx->get_memory();
    if (const auto * kv = dynamic_cast<const llama_kv_cache *>(mem)) {
        return kv;
    }
    if (const auto * iswa = dynamic_cast<const llama_kv_cache_iswa *>(mem)) {
        return iswa->get_base();
    }
    return nullptr;
}

// An upper bound, per coded layer: the code write (reshape, cont and two casts for a quantized cache, the
// encode) and the sparse attention (views of q and of the codes, the query encode, three permutes, select,
// attention, reshape), and for every stream whose stale codes a step rebuilds in its graph (or update() in
// its own) a view of K, a cast, a view of the codes and the encode. Without them a step with many streams
// overflowed upstream's budget of 8 nodes per model tensor.
uint32_t llama_adamas_kv::graph_nodes(const llama_context * lctx) {
    const auto * kv = lctx->get_memory() ? kv_of(lctx) : nullptr;
    if (!kv || lctx->get_cparams().adamas.budget <= 0) {
        return 0;
    }
    uint32_t n_coded = 0;
    for (const auto & layer : kv->layers) {
        n_coded += layer.c != nullptr;
    }
    return n_coded*(16 + 4*kv->get_n_stream());
}

const llama_adamas_kv_state * llama_adamas_kv::state(const llama_context * lctx) {
    const auto * kv = kv_of(lctx);
    return kv ? &kv->adamas : nullptr;
}

const char * llama_adamas_kv::unavailable_reason(const llama_context * lctx) {
    const auto * kv = kv_of(lctx);
    if (!kv) {
        return "the model's memory is not a KV cache (recurrent and hybrid models are not served)";
    }
    if (!kv->adamas.reason.empty()) {
        return kv->adamas.reason.c_str();
    }
    // the first layer's reason, unless some layer past the first n_dense can run sparse (layers split over
    // devices, some of which lack the Adamas ops: see layer_reason for those)
    const int32_t n_dense = lctx->get_cparams().adamas.n_dense;
    static thread_local std::string msg;
    msg.clear();
    for (size_t i = 0; i < kv->layers.size(); ++i) {
        const auto & layer = kv->layers[i];
        const char * why = layer.c ? adamas_cache_reason(lctx->get_model(), lctx->get_cparams(), kv->hparams, layer.il, layer.c, layer.k, layer.v)
                                   : adamas_layer_reason(kv->hparams, layer.il);
        if (!why && (int32_t) i >= n_dense) {
            return nullptr;
        }
        if (why && msg.empty()) {
            msg = std::string("layer ") + std::to_string(layer.il) + ": " + why;
        }
    }
    return msg.empty() ? nullptr : msg.c_str();
}

int32_t llama_adamas_kv::n_sparse_layers(const llama_context * lctx) {
    const auto & p = lctx->get_cparams().adamas;
    if (p.budget <= 0 || unavailable_reason(lctx) != nullptr) {
        return 0;
    }
    const auto * kv = kv_of(lctx);
    int32_t n = 0;
    for (size_t i = 0; i < kv->layers.size(); ++i) {
        const auto & layer = kv->layers[i];
        n += (int32_t) i >= p.n_dense && adamas_layer_coded(lctx, kv->hparams, layer.il, layer.c, layer.k, layer.v);
    }
    return n;
}

const char * llama_adamas_kv::layer_reason(const llama_context * lctx, int32_t il) {
    const llama_hparams & hp = lctx->get_model().hparams;
    const llama_adamas_params & p = lctx->get_cparams().adamas;
    static thread_local std::string msg;
    if (il < 0 || (uint32_t) il >= hp.n_layer()) {
        return "no such layer";
    }
    // a sliding-window layer attends to its window whatever the budget: dense by design, not a failure
    if (hp.is_swa(il)) {
        msg = "sliding-window layer (window " + std::to_string(hp.n_swa) + " tokens): dense by design";
        return msg.c_str();
    }
    if (p.budget <= 0) {
        return "budget 0: Adamas is off";
    }
    const llama_kv_cache * kv = kv_of(lctx);
    if (!kv || kv->map_layer_ids.find(il) == kv->map_layer_ids.end()) {
        return "no KV-cache attention in this layer";
    }
    if ((int32_t) kv->map_layer_ids.at(il) < p.n_dense) {
        msg = "one of the first n_dense = " + std::to_string(p.n_dense) + " layers" +
              (hp.n_swa > 0 ? " that attend over the whole cache (sliding-window layers do not count)" : "");
        return msg.c_str();
    }
    if (const char * why = adamas_layer_reason(hp, il)) {
        return why;
    }
    if (const char * why = unavailable_reason(lctx)) {
        return why;
    }
    // the layer's own device (some layers of the model run sparse elsewhere)
    const auto & layer = kv->layers[kv->map_layer_ids.at(il)];
    if (const char * why = layer.c ? adamas_cache_reason(lctx->get_model(), lctx->get_cparams(), hp, il, layer.c, layer.k, layer.v) : nullptr) {
        msg = why;
        return msg.c_str();
    }
    return nullptr;
}

int64_t llama_adamas_kv::verify(llama_context * lctx) {
    const auto * kv = kv_of(lctx);
    if (!kv) {
        return -1;
    }
    llama_synchronize(lctx);
    const llama_adamas_params & p = lctx->get_cparams().adamas;

    ggml_backend_ptr cpu(ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, nullptr));
    if (!cpu) {
        return -1;
    }
    int64_t n_bad = 0;
    for (const auto & layer : kv->layers) {
        if (!adamas_layer_coded(lctx, kv->hparams, layer.il, layer.c, layer.k, layer.v)) {
            continue;
        }
        const int64_t D   = kv->hparams.n_embd_head_k(layer.il);
        const int64_t nhk = kv->hparams.n_head_kv(layer.il);
        ggml_tensor * k = layer.k;
        ggml_tensor * c = layer.c;
        for (uint32_t s = 0; s < kv->n_stream; ++s) {
            const auto & cells = kv->v_cells[s];
            const int64_t n = cells.used_max_p1();
            if (n == 0) {
                continue;
            }
            if (kv->adamas.is_stale(s)) {
                // valid within the budget (its steps are dense and read no codes); past it, the codes a sparse
                // step would read were never rebuilt: every used cell counts as wrong
                if (p.budget > 0 && cells.get_used() > (uint32_t) p.budget) {
                    n_bad += cells.get_used();
                }
                continue;
            }
            // K rows as F32, on the host
            std::vector<uint8_t> kraw(n*k->nb[1]);
            ggml_backend_tensor_get(k, kraw.data(), s*k->nb[2], kraw.size());
            std::vector<uint8_t> craw(n*c->nb[1]);
            ggml_backend_tensor_get(c, craw.data(), s*c->nb[2], craw.size());

            ggml_init_params ip = { 4*ggml_tensor_overhead() + ggml_graph_overhead(), nullptr, true };
            ggml_context_ptr gctx(ggml_init(ip));
            ggml_tensor * kf = ggml_new_tensor_3d(gctx.get(), GGML_TYPE_F32, D, nhk, n);
            ggml_tensor * enc = ggml_adamas_encode(gctx.get(), kf, (ggml_adamas_thr_mode) p.thr_mode, p.thr_k, kv->attn_rot_k);
            ggml_cgraph * gf = ggml_new_graph(gctx.get());
            ggml_build_forward_expand(gf, enc);
            ggml_backend_buffer_ptr buf(ggml_backend_alloc_ctx_tensors(gctx.get(), cpu.get()));
            if (!buf) {
                return -1;
            }
            std::vector<float> kfloat(D*nhk*n);
            if (k->type == GGML_TYPE_F32) {
                memcpy(kfloat.data(), kraw.data(), kfloat.size()*sizeof(float));
            } else {
                for (int64_t i = 0; i < n; ++i) {
                    ggml_get_type_traits(k->type)->to_float(kraw.data() + i*k->nb[1], kfloat.data() + i*D*nhk, D*nhk);
                }
            }
            ggml_backend_tensor_set(kf, kfloat.data(), 0, ggml_nbytes(kf));
            if (ggml_backend_graph_compute(cpu.get(), gf) != GGML_STATUS_SUCCESS) {
                return -1;
            }
            std::vector<uint8_t> want(ggml_nbytes(enc));
            ggml_backend_tensor_get(enc, want.data(), 0, want.size());
            const size_t row = c->nb[1];
            for (int64_t i = 0; i < n; ++i) {
                if (!cells.is_empty(i) && memcmp(want.data() + i*row, craw.data() + i*row, row) != 0) {
                    n_bad++;
                }
            }
        }
    }
    return n_bad;
}

// ---- the decode step -----------------------------------------------------------------------------------------

// What a step's graph does, decided from the cache before the graph is built (or reused).
struct llama_adamas_plan {
    bool codes  = false;          // key codes are written: some stream of the ubatch is past the budget
    bool sparse = false;          // and it is a decode step: sparse attention
    std::vector<uint32_t> recode; // stale streams of the ubatch whose codes are rebuilt from K (codes only)
    int64_t n_cand = 0;           // > 0 (sparse): the select ranks per query a list of this many cells (its sequence's)

    bool operator==(const llama_adamas_plan & o) const {
        return codes == o.codes && sparse == o.sparse && recode == o.recode && n_cand == o.n_cand;
    }
};

// One per graph built with a budget: counts sparse steps, keeps graph reuse honest about the plan, marks the
// streams' codes stale or fresh as the plan leaves them, and holds the select mask that marks sink and recent
// cells (+INF: always chosen).
class llama_adamas_kv::input : public llm_graph_input_i {
public:
    input(const llama_kv_cache_context * mctx, const llama_adamas_params & p, bool causal, llama_adamas_plan plan)
        : mctx(mctx), p(p), causal(causal), plan(std::move(plan)) {}

    void set_input(const llama_ubatch * ubatch) override;
    void set_cells(const llama_ubatch * ubatch);
    bool can_reuse(const llm_graph_params & params) override;

    static llama_adamas_plan decide(const llama_kv_cache_context * mctx, const llama_ubatch & ub, const llama_adamas_params & p);
    static int64_t n_cand_of(const llama_kv_cache_context * mctx, const llama_ubatch & ub);

    const llama_kv_cache_context * mctx;
    const llama_adamas_params p;
    const bool causal;
    const llama_adamas_plan plan;
    int32_t n_sparse_layers = 0;
    ggml_tensor * sel_mask = nullptr; // F16/F32 like the KQ mask, with +INF at kept cells
    ggml_tensor * cells    = nullptr; // I32 [plan.n_cand, n_tps, ns]: each query's sequence's cells, -1 padded
    ggml_tensor * kq_src   = nullptr; // the KQ mask input sel_mask is copied from (null: build it)
};

// Candidate list length of a sparse step: each query's select ranks only the cells of its sequence (upstream's
// KQ mask hides every other cell: set_input_kq_mask keeps a cell only if it holds the token's seq_id[0]), so
// in a stream holding several sequences (a unified cache) the work and scratch are one sequence's, not the
// stream's. Padded to 256 cells (as n_kv is) so the graph shape changes as rarely as the view's; 0 where the list
// would not be shorter than the view (one sequence per stream).
int64_t llama_adamas_kv::input::n_cand_of(const llama_kv_cache_context * mctx, const llama_ubatch & ub) {
    const llama_kv_cache * kv = mctx->kv;
    const auto & sinfo = mctx->sinfos[mctx->i_cur];
    const int64_t n_kv  = mctx->get_n_kv();
    const uint32_t n_tps = ub.n_tokens/sinfo.n_stream();
    size_t n_max = 1;
    for (uint32_t i = 0; i < ub.n_tokens; ++i) {
        if (!ub.seq_id[i] || ub.n_seq_id[i] < 1) {
            return 0; // a graph reserve's ubatch names no sequences: size it without lists (the larger scratch)
        }
        const auto & cells = kv->v_cells[sinfo.strm[i/n_tps]];
        n_max = std::max(n_max, cells.seq_pos_get(ub.seq_id[i][0]).size());
    }
    const int64_t n_cand = GGML_PAD((int64_t) n_max, 256);
    return n_cand < n_kv ? n_cand : 0;
}

// While every stream of the ubatch holds at most the budget (counting this ubatch), dense attention is exact
// and cheaper, and no codes are needed: the graph is upstream's, and the streams' codes go stale. Past it, a
// decode step (one token per sequence) is sparse, and any step writes codes, rebuilding a stale stream's.
llama_adamas_plan llama_adamas_kv::input::decide(const llama_kv_cache_context * mctx, const llama_ubatch & ub, const llama_adamas_params & p) {
    llama_adamas_plan plan;
    if (p.budget <= 0) {
        return plan;
    }
    const llama_kv_cache * kv = mctx->kv;
    const auto & sinfo = mctx->sinfos[mctx->i_cur];
    uint32_t n_used = 0;
    for (uint32_t s = 0; s < sinfo.n_stream(); ++s) {
        n_used = std::max(n_used, kv->v_cells[sinfo.strm[s]].get_used());
    }
    plan.codes  = n_used > (uint32_t) p.budget;
    plan.sparse = plan.codes && ub.n_tokens == ub.n_seqs_unq;
    plan.n_cand = plan.sparse ? n_cand_of(mctx, ub) : 0;
    for (uint32_t s = 0; s < sinfo.n_stream() && plan.codes; ++s) {
        // every stale stream of the ubatch, not only those past the budget: the select ranks all of them
        if (kv->adamas.is_stale(sinfo.strm[s])) {
            plan.recode.push_back(sinfo.strm[s]);
        }
    }
    return plan;
}

bool llama_adamas_kv::input::can_reuse(const llm_graph_params & params) {
    // the layers Adamas serves are those of a plain KV cache, or the non-SWA part of an iSWA cache
    const auto * iswa = dynamic_cast<const llama_kv_cache_iswa_context *>(params.mctx);
    mctx = iswa ? iswa->get_base() : static_cast<const llama_kv_cache_context *>(params.mctx);
    return decide(mctx, params.ubatch, p) == plan;
}

void llama_adamas_kv::input::set_input(const llama_ubatch * ubatch) {
    // here, not in build_attn: a reused graph is not built again
    auto & st = mctx->kv->adamas;
    if (!plan.codes) {
        for (uint32_t s : mctx->sinfos[mctx->i_cur].strm) {
            st.set_stale(s, true);
        }
    }
    for (uint32_t s : plan.recode) {
        st.set_stale(s, false);
    }

    if (!plan.sparse || n_sparse_layers == 0) {
        return;
    }
    mctx->kv->adamas.n_sparse_steps++;

    if (cells && cells->buffer) {
        set_cells(ubatch);
    }
    if (!sel_mask || !sel_mask->buffer) {
        return;
    }
    // the select mask is the KQ mask with +INF at the forced cells. The KQ mask input was added to the graph before
    // this one (build_attn_inp_kv precedes the layers), so it is already set for this ubatch: a copy instead of a
    // second build (with the walk below, a sparse step's host work fell from 80.9 to 5.1 us at 16.6K cells on the
    // 2-core Xeon: docs/perf-notes.md).
    if (kq_src && kq_src->buffer && ggml_backend_buffer_is_host(kq_src->buffer) && kq_src->type == sel_mask->type &&
            ggml_are_same_shape(kq_src, sel_mask) && ggml_is_contiguous(kq_src) && ggml_is_contiguous(sel_mask)) {
        memcpy(sel_mask->data, kq_src->data, ggml_nbytes(sel_mask));
    } else {
        mctx->set_input_kq_mask(sel_mask, ubatch, causal);
    }

    constexpr uint16_t ADAMAS_F16_NINF_BITS = 0xFC00u;
    constexpr uint32_t ADAMAS_F32_NINF_BITS = 0xFF800000u;
    // keep the n_sink oldest and the n_recent newest visible cells of each query row. In a causal, 1-D, non-SWA
    // row the visible cells are the (pos, cell) pairs of the token's sequence up to its position, which the cells
    // keep ordered (seq_pos): the forced ones are the first n_sink and the last n_recent of that range, found
    // without reading the row. Otherwise (M-RoPE, SWA, non-causal) the row is read and the same cells are found
    // by nth_element over its visible (pos, cell) pairs, seq_pos's order.
    const int64_t n_kv  = sel_mask->ne[0];
    const int64_t n_row = sel_mask->ne[1];
    const int64_t n_str = sel_mask->ne[3];
    const bool    f16   = sel_mask->type == GGML_TYPE_F16;
    const auto & sinfo = mctx->sinfos[mctx->i_cur];
    const int32_t p_recent = llama_adamas_n_recent(&p); // AUTO resolved once for the step
    const bool by_seq = causal && !ubatch->is_pos_2d() && mctx->kv->swa_type == LLAMA_SWA_TYPE_NONE &&
                        n_row*n_str == (int64_t) ubatch->n_tokens;
    std::vector<std::pair<llama_pos, int64_t>> vis;
    for (int64_t s = 0; s < n_str; ++s) {
        const auto & cells = mctx->kv->v_cells[sinfo.strm[s]];
        for (int64_t r = 0; r < n_row; ++r) {
            char * row = (char *) sel_mask->data + r*sel_mask->nb[1] + s*sel_mask->nb[3];
            // -INF by its bits (the mask holds 0, -INF or an ALiBi bias; no NaN)
            auto visible = [&](int64_t c) {
                return (f16 ? ((const uint16_t *) row)[c] != ADAMAS_F16_NINF_BITS
                            : ((const uint32_t *) row)[c] != ADAMAS_F32_NINF_BITS) && !cells.is_empty(c);
            };
            auto keep = [&](int64_t c) {
                if (f16) {
                    ((ggml_fp16_t *) row)[c] = ggml_fp32_to_fp16(INFINITY);
                } else {
                    ((float *) row)[c] = INFINITY;
                }
            };
            if (by_seq) {
                const int64_t i = s*n_row + r;
                const auto & sp = cells.seq_pos_get(ubatch->seq_id[i][0]);
                auto lo = sp.begin();
                auto hi = sp.upper_bound({ ubatch->pos[i], std::numeric_limits<uint32_t>::max() }); // causal: pos <= p1
                for (int64_t k = 0; k < p.n_sink && lo != hi; ++k, ++lo) {
                    keep(lo->second);
                }
                for (int64_t k = 0; k < p_recent && hi != lo; ++k) {
                    keep((--hi)->second); // stops where the sinks end: fewer visible than both keeps all
                }
                continue;
            }
            vis.clear();
            for (int64_t c = 0; c < n_kv; ++c) {
                if (visible(c)) {
                    vis.emplace_back(cells.pos_get(c), c);
                }
            }
            const int64_t n        = (int64_t) vis.size();
            const int64_t n_sink   = std::min<int64_t>(p.n_sink, n);
            const int64_t n_recent = std::min<int64_t>(p_recent, n - n_sink); // fewer visible than both: all kept
            if (n_sink > 0) {
                std::nth_element(vis.begin(), vis.begin() + n_sink - 1, vis.end());
            }
            if (n_recent > 0) {
                std::nth_element(vis.begin() + n_sink, vis.end() - n_recent, vis.end());
            }
            for (int64_t i = 0; i < n_sink; ++i) {
                keep(vis[i].second);
            }
            for (int64_t i = n - n_recent; i < n; ++i) {
                keep(vis[i].second);
            }
        }
    }
}

// Each query row's candidate list: the cells of the view holding its token's seq_id[0] (a superset of those the
// KQ mask shows it; the mask hides the rest), in increasing order, then -1.
void llama_adamas_kv::input::set_cells(const llama_ubatch * ubatch) {
    GGML_ASSERT(ggml_backend_buffer_is_host(cells->buffer));
    const int64_t n_cand = cells->ne[0];
    const int64_t n_tps  = cells->ne[1];
    const int64_t n_str  = cells->ne[2];
    const uint32_t n_kv  = mctx->get_n_kv();
    const auto & sinfo = mctx->sinfos[mctx->i_cur];
    GGML_ASSERT(ubatch->n_tokens == n_tps*n_str);
    std::vector<llama_seq_id> seqs;
    std::vector<int32_t> list;
    for (int64_t s = 0; s < n_str; ++s) {
        const auto & vc = mctx->kv->v_cells[sinfo.strm[s]];
        // one list per sequence of the stream's rows, written to each of its rows
        seqs.clear();
        for (int64_t r = 0; r < n_tps; ++r) {
            const llama_seq_id id = ubatch->seq_id[s*n_tps + r][0];
            if (std::find(seqs.begin(), seqs.end(), id) == seqs.end()) {
                seqs.push_back(id);
            }
        }
        for (llama_seq_id id : seqs) {
            list.assign(n_cand, -1);
            int64_t n = 0;
            for (uint32_t c = 0; c < n_kv; ++c) {
                if (vc.seq_has(c, id)) {
                    GGML_ASSERT(n < n_cand && "Adamas candidate list longer than planned");
                    list[n++] = (int32_t) c;
                }
            }
            for (int64_t r = 0; r < n_tps; ++r) {
                if (ubatch->seq_id[s*n_tps + r][0] == id) {
                    memcpy((char *) cells->data + r*cells->nb[1] + s*cells->nb[2], list.data(), n_cand*sizeof(int32_t));
                }
            }
        }
    }
}

// Writes the codes of k_cur into the code tensor c at the cells k_idxs; returns the write (a view of c).
// The keys are encoded as a type_k cache stores them (rounded to F16, or quantized), so that codes rebuilt
// from the cache after a shift or a state load are the same bits.
static ggml_tensor * adamas_write_codes(ggml_context * ctx, ggml_tensor * c, ggml_tensor * k_cur, ggml_tensor * k_idxs,
        ggml_type type_k, const llama_adamas_params & p, bool skip_wht) {
    ggml_tensor * c2d = c->ne[2] > 1 ? ggml_reshape_2d(ctx, c, c->ne[0], c->ne[1]*c->ne[2]) : c; // idxs are global
    ggml_tensor * k_enc = k_cur;
    if (type_k != GGML_TYPE_F32 && type_k != GGML_TYPE_F16) {
        k_enc = ggml_cast(ctx, ggml_is_contiguous(k_cur) ? k_cur : ggml_cont(ctx, k_cur), type_k);
        k_enc = ggml_cast(ctx, k_enc, GGML_TYPE_F32);
    }
    ggml_tensor * w = ggml_adamas_encode_set_rows(ctx, c2d, k_enc, k_idxs, (ggml_adamas_thr_mode) p.thr_mode, p.thr_k, skip_wht);
    ggml_adamas_encode_set_round_f16(w, type_k == GGML_TYPE_F16); // F16 caches: no cast node
    return w;
}

ggml_tensor * llama_adamas_kv::build_attn(
        const llm_graph_context & g,
        const llama_kv_cache_context * mctx,
        ggml_tensor * k_idxs,
        ggml_tensor * k_rot,
        llm_graph_input_i ** slot,
        ggml_tensor * q_cur,
        ggml_tensor * k_cur,
        ggml_tensor * k,
        ggml_tensor * v,
        ggml_tensor * kq_b,
        ggml_tensor * kq_mask,
        ggml_tensor * sinks,
        float         kq_scale,
        int           il) {
    const llama_adamas_params & p = g.cparams.adamas;
    const llama_kv_cache * kv = mctx->kv;
    auto & st = kv->adamas;

    const auto ikv = kv->map_layer_ids.find(il);
    ggml_tensor * c = ikv == kv->map_layer_ids.end() ? nullptr : kv->layers[ikv->second].c;

    if (p.budget <= 0) {
        // K is written without codes: they are rebuilt if a budget is set later (every stream: a reused
        // graph does not come here)
        if (c) {
            invalidate(*kv);
        }
        return nullptr;
    }
    if (g.cparams.training || kv->other) {
        return nullptr;
    }

    // what keeps this model (or layer) dense, said once per context; the cache's device is the layer's own
    // (layers split over devices: those on one without the Adamas ops stay dense, the others sparse)
    const char * reason = nullptr;
    bool model_wide = true;
    if (!c) {
        reason = adamas_layer_reason(g.hparams, il);
    } else if (kq_b || sinks) {
        reason = kq_b ? "attention bias (kq_b)" : "attention sinks";
    } else if (g.arch == LLM_ARCH_GROK) {
        reason = "Grok attention";
    } else if (v->nb[1] > v->nb[2]) {
        reason = "transposed V cache";
    } else {
        reason = adamas_cache_reason(kv->model, g.cparams, g.hparams, il, c, kv->layers[ikv->second].k, kv->layers[ikv->second].v);
        model_wide = false;
    }
    if (reason) {
        if (!st.warned) {
            LLAMA_LOG_WARN("%s: Adamas off for layer %d (%s): it decodes dense\n", __func__, il, reason);
            st.warned = true;
        }
        if (model_wide && st.reason.empty()) {
            st.reason = std::string("layer ") + std::to_string(il) + ": " + reason;
        }
        return nullptr;
    }

    ggml_context * ctx0 = g.ctx0;
    const bool skip_wht = k_rot != nullptr; // q and k are already Hadamard-rotated (nrot == D)

    // one input object per graph (made at the first layer that gets here)
    auto * ai = static_cast<llama_adamas_kv::input *>(*slot);
    if (!ai) {
        auto obj = std::make_unique<llama_adamas_kv::input>(mctx, p, g.cparams.causal_attn,
                llama_adamas_kv::input::decide(mctx, g.ubatch, p));
        if (obj->plan.sparse && (p.n_sink > 0 || llama_adamas_n_recent(&p) > 0)) {
            obj->sel_mask = ggml_new_tensor(ctx0, kq_mask->type, 4, kq_mask->ne);
            ggml_set_input(obj->sel_mask);
            ggml_set_name(obj->sel_mask, "adamas_sel_mask");
            obj->kq_src = (kq_mask->flags & GGML_TENSOR_FLAG_INPUT) ? kq_mask : nullptr;
        }
        if (obj->plan.n_cand > 0) {
            // k: [D, n_head_kv, n_kv, ns]; one list per query (the ubatch's tokens, n_tps per stream)
            obj->cells = ggml_new_tensor_3d(ctx0, GGML_TYPE_I32, obj->plan.n_cand, q_cur->ne[2]/k->ne[3], k->ne[3]);
            ggml_set_input(obj->cells);
            ggml_set_name(obj->cells, "adamas_cells");
        }
        ai = static_cast<llama_adamas_kv::input *>(g.res->add_input(std::move(obj)));
        *slot = ai;
    }
    if (!ai->plan.codes) {
        return nullptr; // within the budget: upstream's dense graph
    }

    // k: [D, n_head_kv, n_kv, ns] (get_k), q_cur: [D, n_head, n_tokens]
    const int64_t D      = k->ne[0];
    const int64_t n_kv   = k->ne[2];
    const int64_t ns     = k->ne[3];

    // codes of this ubatch's keys at K's cells; for a stale stream, of all its cells instead, from K after this
    // ubatch's write (graph order), so the new keys too. A layer that reuses another's cache reads its codes.
    const auto & sinfo = mctx->sinfos[mctx->i_cur];
    ggml_tensor * c_written = c; // what the select's view reads from: the write of stream s0, where there is one
    if (k_cur) {
        const auto & layer = kv->layers[ikv->second];
        if (ai->plan.recode.size() < sinfo.n_stream()) {
            c_written = adamas_write_codes(ctx0, c, k_cur, k_idxs, layer.k->type, p, skip_wht);
            ggml_build_forward_expand(g.gf, c_written);
        }
        for (uint32_t s : ai->plan.recode) {
            ggml_tensor * w = adamas_recode(ctx0, c, layer.k, D, k->ne[1], s, n_kv, p, skip_wht);
            ggml_build_forward_expand(g.gf, w);
            if (s == sinfo.s0) {
                c_written = w; // the other streams' writes precede the select in graph order
            }
        }
    }

    if (!ai->plan.sparse || (int32_t) ikv->second < p.n_dense) {
        return nullptr; // n_dense counts the cache's layers: the full-attention ones of an iSWA model
    }
    ai->n_sparse_layers++;
    const int64_t n_head = q_cur->ne[1];
    const int64_t n_tps  = q_cur->ne[2]/ns;

    ggml_tensor * q4 = ggml_view_4d(ctx0, q_cur, D, n_head, n_tps, ns, q_cur->nb[1], q_cur->nb[2], q_cur->nb[2]*n_tps, 0);
    ggml_tensor * qc = ggml_adamas_encode(ctx0, q4, (ggml_adamas_thr_mode) p.thr_mode, p.thr_q, skip_wht);

    // the codes of the visible cells, viewed from the write so that the read follows it (c_written is a view of
    // c at offset 0 or at stream s0)
    const size_t row = c->nb[1];
    ggml_tensor * kc = ggml_view_4d(ctx0, c_written, GGML_ADAMAS_CODE_SIZE(D), k->ne[1], n_kv, ns,
            GGML_ADAMAS_CODE_SIZE(D), row, row*c->ne[1], row*c->ne[1]*sinfo.s0 - c_written->view_offs);

    ggml_tensor * qp = ggml_permute(ctx0, q4, 0, 2, 1, 3);
    ggml_tensor * kp = ggml_permute(ctx0, k,  0, 2, 1, 3);
    ggml_tensor * vp = ggml_permute(ctx0, v,  0, 2, 1, 3);

    const float softcap = g.hparams.attn_soft_cap ? g.hparams.f_attn_logit_softcapping : 0.0f;
    ggml_tensor * idx = nullptr;
    ggml_tensor * cur = adamas_select_attn(ctx0, p, p.budget, qc, kc, ai->sel_mask ? ai->sel_mask : kq_mask, ai->cells,
            qp, kp, vp, kq_mask, kq_scale, softcap, &idx);
    g.cb(idx, "adamas_idx", il);

    return ggml_reshape_2d(ctx0, cur, cur->ne[0]*cur->ne[1], cur->ne[2]*cur->ne[3]);
}
