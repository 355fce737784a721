// Loads a GGUF through the C API and decodes. Independent reference: the same tokens evaluated as one
// batch (dense prefill). Checks
//   1. our API is present and reports the version this test was built for;
//   2. token-by-token decode through the KV cache gives the logits of the batch evaluation;
//   3. greedy generation is deterministic (same tokens twice from a cleared cache);
//   4. a batch that does not fit the context is refused, and the context stays usable.
// usage: test-decode MODEL.gguf [N_GPU_LAYERS]
#include "llama.h"
#include "llama-adamas.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define CHECK(cond, ...) do { if (!(cond)) { \
    fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); fprintf(stderr, __VA_ARGS__); \
    fprintf(stderr, "\n"); exit(1); } } while (0)

static void quiet_log(ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

// Evaluates tokens[0..n) at positions pos0.. in one batch and returns the logits of every position.
static int decode(llama_context * ctx, const std::vector<llama_token> & toks, int pos0, std::vector<float> * logits, int n_vocab) {
    llama_batch b = llama_batch_init((int) toks.size(), 0, 1);
    for (size_t i = 0; i < toks.size(); i++) {
        b.token[i] = toks[i]; b.pos[i] = pos0 + (int) i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0; b.logits[i] = 1;
    }
    b.n_tokens = (int) toks.size();
    const int rc = llama_decode(ctx, b);
    if (rc == 0 && logits) {
        for (size_t i = 0; i < toks.size(); i++) {
            const float * l = llama_get_logits_ith(ctx, (int) i);
            logits->insert(logits->end(), l, l + n_vocab);
        }
    }
    llama_batch_free(b);
    return rc;
}

static std::vector<llama_token> greedy(llama_context * ctx, std::vector<llama_token> prompt, int n, int n_vocab) {
    llama_memory_clear(llama_get_memory(ctx), true);
    std::vector<float> l;
    CHECK(decode(ctx, prompt, 0, &l, n_vocab) == 0, "prompt decode failed");
    std::vector<llama_token> out;
    int pos = (int) prompt.size();
    for (int i = 0; i < n; i++) {
        const float * last = l.data() + l.size() - n_vocab;
        const llama_token t = (llama_token) (std::max_element(last, last + n_vocab) - last);
        out.push_back(t);
        l.clear();
        CHECK(decode(ctx, {t}, pos++, &l, n_vocab) == 0, "decode failed");
    }
    return out;
}

int main(int argc, char ** argv) {
    CHECK(argc == 2 || argc == 3, "usage: %s MODEL.gguf [N_GPU_LAYERS]", argv[0]);
    CHECK(strcmp(llama_adamas_version(), ADAMAS_GGUF_VERSION_EXPECTED) == 0,
          "library version %s, expected %s", llama_adamas_version(), ADAMAS_GGUF_VERSION_EXPECTED);
    CHECK(strstr(llama_adamas_upstream(), "llama-cpp-python 0.3.36") != nullptr, "upstream %s", llama_adamas_upstream());

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = argc == 3 ? atoi(argv[2]) : 0;
    mp.progress_callback = [](float, void *) { return true; }; // no progress dots
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    CHECK(model != nullptr, "cannot load %s", argv[1]);
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    const int n_ctx = 256;
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = n_ctx;
    cp.n_ubatch = n_ctx;
    cp.n_threads = cp.n_threads_batch = 2;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    llama_context * ctx = llama_init_from_model(model, cp);
    CHECK(ctx != nullptr, "cannot create a context");

    // a fixed pseudo-random prompt (no tokenizer needed)
    const int n_prompt = 96;
    std::vector<llama_token> prompt(n_prompt);
    uint32_t s = 12345;
    for (auto & t : prompt) { s = s * 1664525u + 1013904223u; t = 3 + (llama_token) ((s >> 8) % (uint32_t) (n_vocab - 3)); }

    // 2. batch vs one token at a time
    std::vector<float> ref, inc;
    CHECK(decode(ctx, prompt, 0, &ref, n_vocab) == 0, "batch decode failed");
    llama_memory_clear(llama_get_memory(ctx), true);
    for (int i = 0; i < n_prompt; i++) {
        CHECK(decode(ctx, {prompt[i]}, i, &inc, n_vocab) == 0, "decode of token %d failed", i);
    }
    double max_err = 0, max_ref = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        CHECK(std::isfinite(inc[i]), "non-finite logit at %zu", i);
        max_err = std::max(max_err, (double) std::fabs(ref[i] - inc[i]));
        max_ref = std::max(max_ref, (double) std::fabs(ref[i]));
    }
    printf("batch vs incremental: max |diff| %.3g (max |logit| %.3g)\n", max_err, max_ref);
    CHECK(max_ref > 0, "all logits are zero");
    CHECK(max_err <= 2e-3 * max_ref, "incremental decode differs from the batch: %.3g", max_err);

    // 3. determinism
    const auto a = greedy(ctx, {prompt.begin(), prompt.begin() + 16}, 24, n_vocab);
    const auto b = greedy(ctx, {prompt.begin(), prompt.begin() + 16}, 24, n_vocab);
    CHECK(a == b, "greedy generation is not deterministic");

    // 4. a batch that does not fit in what is left of the context finds no KV slot and is refused;
    //    the context still works afterwards
    llama_memory_clear(llama_get_memory(ctx), true);
    std::vector<llama_token> fill(n_ctx - 16, prompt[0]), overflow(64, prompt[1]);
    CHECK(decode(ctx, fill, 0, nullptr, n_vocab) == 0, "filling the context failed");
    CHECK(decode(ctx, overflow, n_ctx - 16, nullptr, n_vocab) != 0, "a batch past the context was accepted");
    CHECK(greedy(ctx, {prompt.begin(), prompt.begin() + 16}, 24, n_vocab) == a, "context broken after a refused batch");

    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    printf("OK %s\n", argv[1]);
    return 0;
}
