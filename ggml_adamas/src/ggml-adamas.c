// Constructors of the Adamas ops (see ggml-adamas.h). Compiled into ggml-base beside ggml.c.
//
// op_params:
//   ADAMAS_ENCODE: i32 mode, f32 thr, i32 skip_wht, i32 round_f16   src: a, idxs (set_rows form), codes (set_rows form)
//   ADAMAS_SELECT: i32 budget, i32 mode                     src: qc, kc, mask, cells (the _cells form)
//   ADAMAS_ATTN:   f32 scale, f32 softcap, i32 n_keep (0: all) src: q, k, v, mask, idx

#include "ggml-adamas.h"
#include "ggml-impl.h"

#include <math.h>

bool ggml_adamas_supported_dim(int64_t d) {
    return d >= GGML_ADAMAS_D_MIN && d <= GGML_ADAMAS_D_MAX && (d & (d - 1)) == 0;
}

static void ggml_adamas_encode_params(struct ggml_tensor * t, enum ggml_adamas_thr_mode mode, float thr, bool skip_wht) {
    GGML_ASSERT(mode == GGML_ADAMAS_THR_FIXED || mode == GGML_ADAMAS_THR_RMS);
    GGML_ASSERT(isfinite(thr) && thr > 0.0f && "Adamas threshold must be > 0");
    ggml_set_op_params_i32(t, 0, mode);
    ggml_set_op_params_f32(t, 1, thr);
    ggml_set_op_params_i32(t, 2, skip_wht ? 1 : 0);
    t->op = GGML_OP_ADAMAS_ENCODE;
}

static void ggml_adamas_check_rows(const struct ggml_tensor * a) {
    GGML_ASSERT(a->type == GGML_TYPE_F32 || a->type == GGML_TYPE_F16);
    GGML_ASSERT(ggml_adamas_supported_dim(a->ne[0]) && "Adamas head dim must be a power of two in [32, 256]");
    GGML_ASSERT(a->nb[0] == ggml_type_size(a->type));
}

struct ggml_tensor * ggml_adamas_encode(
        struct ggml_context * ctx,
        struct ggml_tensor  * a,
        enum ggml_adamas_thr_mode mode,
        float                 thr,
        bool                  skip_wht) {
    ggml_adamas_check_rows(a);

    const int64_t ne[4] = { GGML_ADAMAS_CODE_SIZE(a->ne[0]), a->ne[1], a->ne[2], a->ne[3] };
    struct ggml_tensor * result = ggml_new_tensor(ctx, GGML_TYPE_I8, 4, ne);

    ggml_adamas_encode_params(result, mode, thr, skip_wht);
    result->src[0] = a;

    return result;
}

struct ggml_tensor * ggml_adamas_encode_set_rows(
        struct ggml_context * ctx,
        struct ggml_tensor  * codes,
        struct ggml_tensor  * a,
        struct ggml_tensor  * idxs,
        enum ggml_adamas_thr_mode mode,
        float                 thr,
        bool                  skip_wht) {
    ggml_adamas_check_rows(a);
    GGML_ASSERT(a->ne[3] == 1);
    GGML_ASSERT(codes->type == GGML_TYPE_I8);
    GGML_ASSERT(codes->ne[0] == a->ne[1]*GGML_ADAMAS_CODE_SIZE(a->ne[0]));
    GGML_ASSERT(ggml_is_contiguous_rows(codes));
    if (idxs) {
        GGML_ASSERT(idxs->type == GGML_TYPE_I64 || idxs->type == GGML_TYPE_I32);
        GGML_ASSERT(ggml_is_vector(idxs) && idxs->ne[0] == a->ne[2]);
    } else {
        GGML_ASSERT(a->ne[2] <= ggml_nrows(codes));
    }

    struct ggml_tensor * result = ggml_view_tensor(ctx, codes);

    ggml_adamas_encode_params(result, mode, thr, skip_wht);
    result->src[0] = a;
    result->src[1] = idxs;
    result->src[2] = codes;

    return result;
}

void ggml_adamas_encode_set_round_f16(struct ggml_tensor * encode, bool round_f16) {
    GGML_ASSERT(encode->op == GGML_OP_ADAMAS_ENCODE);
    ggml_set_op_params_i32(encode, 3, round_f16 ? 1 : 0);
}

static void ggml_adamas_check_mask(const struct ggml_tensor * mask, int64_t n_kv, int64_t n_q, int64_t ns) {
    if (mask == NULL) {
        return;
    }
    GGML_ASSERT(mask->type == GGML_TYPE_F16 || mask->type == GGML_TYPE_F32);
    GGML_ASSERT(mask->ne[0] == n_kv);
    GGML_ASSERT(mask->ne[1] >= n_q);
    GGML_ASSERT(mask->ne[2] == 1);
    GGML_ASSERT(mask->ne[3] == ns || mask->ne[3] == 1);
    GGML_ASSERT(mask->nb[0] == ggml_type_size(mask->type));
}

static struct ggml_tensor * ggml_adamas_select_impl(
        struct ggml_context * ctx,
        struct ggml_tensor  * qc,
        struct ggml_tensor  * kc,
        struct ggml_tensor  * mask,
        struct ggml_tensor  * cells,
        int                   budget,
        enum ggml_adamas_select_mode mode) {
    GGML_ASSERT(qc->type == GGML_TYPE_I8 && kc->type == GGML_TYPE_I8);
    GGML_ASSERT(qc->ne[0] == kc->ne[0]);
    GGML_ASSERT(ggml_adamas_supported_dim(4*qc->ne[0]));
    GGML_ASSERT(qc->nb[0] == 1 && kc->nb[0] == 1);
    GGML_ASSERT(kc->ne[1] > 0 && qc->ne[1] % kc->ne[1] == 0);
    GGML_ASSERT(qc->ne[3] == kc->ne[3]);
    GGML_ASSERT(budget > 0 && "Adamas budget must be > 0");
    GGML_ASSERT(mode == GGML_ADAMAS_SELECT_HEAD || mode == GGML_ADAMAS_SELECT_GROUP);
    // distances are uint16 in the kernels: 3*D per query head, summed over a group
    GGML_ASSERT(3*4*qc->ne[0]*(mode == GGML_ADAMAS_SELECT_GROUP ? qc->ne[1]/kc->ne[1] : 1) + 1 < 65535);
    ggml_adamas_check_mask(mask, kc->ne[2], qc->ne[2], qc->ne[3]);
    if (cells) {
        GGML_ASSERT(cells->type == GGML_TYPE_I32 && cells->nb[0] == sizeof(int32_t));
        GGML_ASSERT(cells->ne[0] > 0 && cells->ne[1] == qc->ne[2] && cells->ne[2] == qc->ne[3] && cells->ne[3] == 1);
    }

    const int64_t n_sel = mode == GGML_ADAMAS_SELECT_HEAD ? qc->ne[1] : kc->ne[1];
    const int64_t ne[4] = { budget, n_sel, qc->ne[2], qc->ne[3] };
    struct ggml_tensor * result = ggml_new_tensor(ctx, GGML_TYPE_I32, 4, ne);

    ggml_set_op_params_i32(result, 0, budget);
    ggml_set_op_params_i32(result, 1, mode);

    result->op     = GGML_OP_ADAMAS_SELECT;
    result->src[0] = qc;
    result->src[1] = kc;
    result->src[2] = mask;
    result->src[3] = cells;

    return result;
}

struct ggml_tensor * ggml_adamas_select(
        struct ggml_context * ctx,
        struct ggml_tensor  * qc,
        struct ggml_tensor  * kc,
        struct ggml_tensor  * mask,
        int                   budget,
        enum ggml_adamas_select_mode mode) {
    return ggml_adamas_select_impl(ctx, qc, kc, mask, NULL, budget, mode);
}

struct ggml_tensor * ggml_adamas_select_cells(
        struct ggml_context * ctx,
        struct ggml_tensor  * qc,
        struct ggml_tensor  * kc,
        struct ggml_tensor  * mask,
        struct ggml_tensor  * cells,
        int                   budget,
        enum ggml_adamas_select_mode mode) {
    GGML_ASSERT(cells != NULL);
    return ggml_adamas_select_impl(ctx, qc, kc, mask, cells, budget, mode);
}

static struct ggml_tensor * ggml_adamas_attn_impl(
        struct ggml_context * ctx,
        struct ggml_tensor  * q,
        struct ggml_tensor  * k,
        struct ggml_tensor  * v,
        struct ggml_tensor  * mask,
        struct ggml_tensor  * idx,
        float                 scale,
        float                 softcap,
        int                   n_keep,
        int                   n_lead) {
    GGML_ASSERT(q->type == GGML_TYPE_F32 && q->nb[0] == sizeof(float));
    GGML_ASSERT(k->ne[0] == q->ne[0]);
    GGML_ASSERT(v->ne[1] == k->ne[1] && v->ne[2] == k->ne[2] && v->ne[3] == k->ne[3]);
    GGML_ASSERT(k->nb[0] == ggml_type_size(k->type) && v->nb[0] == ggml_type_size(v->type));
    GGML_ASSERT(k->ne[0] % ggml_blck_size(k->type) == 0 && v->ne[0] % ggml_blck_size(v->type) == 0);
    GGML_ASSERT(q->ne[2] % k->ne[2] == 0);
    GGML_ASSERT(q->ne[3] == k->ne[3]);
    GGML_ASSERT(idx->type == GGML_TYPE_I32);
    GGML_ASSERT(idx->ne[1] == q->ne[2] || idx->ne[1] == k->ne[2]);
    GGML_ASSERT(idx->ne[2] == q->ne[1] && idx->ne[3] == q->ne[3]);
    GGML_ASSERT(isfinite(scale) && isfinite(softcap) && softcap >= 0.0f);
    ggml_adamas_check_mask(mask, k->ne[1], q->ne[1], q->ne[3]);

    // permuted like ggml_flash_attn_ext: [Dv, n_head, n_q, ns]
    const int64_t ne[4] = { v->ne[0], q->ne[2], q->ne[1], q->ne[3] };
    struct ggml_tensor * result = ggml_new_tensor(ctx, GGML_TYPE_F32, 4, ne);

    ggml_set_op_params_f32(result, 0, scale);
    ggml_set_op_params_f32(result, 1, softcap);
    ggml_set_op_params_i32(result, 2, n_keep); // 0: every slot
    ggml_set_op_params_i32(result, 3, n_lead); // slots kept whatever their logit (with n_keep > 0)

    result->op     = GGML_OP_ADAMAS_ATTN;
    result->src[0] = q;
    result->src[1] = k;
    result->src[2] = v;
    result->src[3] = mask;
    result->src[4] = idx;

    return result;
}

struct ggml_tensor * ggml_adamas_attn(
        struct ggml_context * ctx,
        struct ggml_tensor  * q,
        struct ggml_tensor  * k,
        struct ggml_tensor  * v,
        struct ggml_tensor  * mask,
        struct ggml_tensor  * idx,
        float                 scale,
        float                 softcap) {
    return ggml_adamas_attn_impl(ctx, q, k, v, mask, idx, scale, softcap, 0, 0);
}

struct ggml_tensor * ggml_adamas_attn_rerank(
        struct ggml_context * ctx,
        struct ggml_tensor  * q,
        struct ggml_tensor  * k,
        struct ggml_tensor  * v,
        struct ggml_tensor  * mask,
        struct ggml_tensor  * idx,
        float                 scale,
        float                 softcap,
        int                   n_keep,
        int                   n_lead) {
    GGML_ASSERT(n_keep >= 1 && n_keep <= idx->ne[0]);
    GGML_ASSERT(n_lead >= 0 && n_lead <= n_keep);
    return ggml_adamas_attn_impl(ctx, q, k, v, mask, idx, scale, softcap, n_keep, n_lead);
}
