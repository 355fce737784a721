// adamas_gguf: the Adamas flags of upstream's common library (llama-server, llama-cli, ...).
//
// arg.cpp (cpp/patches/0020) registers the --adamas-* flags, which keep their raw values; once every flag and
// environment variable is read, common_adamas_finish() parses and checks them all, so a bad value is one line
// and a non-zero exit before any model loads. common_init_from_params() applies them to the context it creates
// (every slot of llama-server shares it). Speculative draft contexts are created elsewhere and stay dense.
// Upstream's own flags (--rerank among them) keep their meaning.
#pragma once

#include "llama-adamas.h"

#include <string>
#include <vector>

struct common_arg;
struct common_params;
struct llama_context;

enum common_adamas_flag {
    COMMON_ADAMAS_BUDGET,
    COMMON_ADAMAS_DENSE_LAYERS,
    COMMON_ADAMAS_THR_MODE,
    COMMON_ADAMAS_THR_Q,
    COMMON_ADAMAS_THR_K,
    COMMON_ADAMAS_SELECT,
    COMMON_ADAMAS_SINK,
    COMMON_ADAMAS_RECENT,
    COMMON_ADAMAS_RERANK,
    COMMON_ADAMAS_N_FLAGS,
};

struct common_adamas {
    llama_adamas_params params = llama_adamas_default_params(); // valid once common_adamas_finish() ran
    std::string raw[COMMON_ADAMAS_N_FLAGS];                      // the values as given
    bool        given[COMMON_ADAMAS_N_FLAGS] = {};
};

// The --adamas-* options, for common_params_parser_init.
std::vector<common_arg> common_adamas_args();

// Parses and checks the given --adamas-* values into params.adamas.params; throws std::invalid_argument with a
// one-line message on a bad value or combination (flash attention off with a budget among them).
void common_adamas_finish(common_params & params);

// Sets the parameters on a context made by common_init_from_params, and says once what Adamas will do there.
void common_adamas_apply(llama_context * lctx, const common_params & params);

// Logs how many decode steps ran sparse (at the end of a context's life; 0 lines when Adamas is off).
void common_adamas_report(const llama_context * lctx);
