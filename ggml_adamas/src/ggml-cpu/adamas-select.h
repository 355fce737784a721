#pragma once

// CPU kernel of GGML_OP_ADAMAS_SELECT (ggml-adamas.h).

#include "ggml.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ggml_compute_params;

void ggml_compute_forward_adamas_select(const struct ggml_compute_params * params, struct ggml_tensor * dst);

// work buffer bytes for n_tasks threads (ggml_graph_plan)
size_t ggml_cpu_adamas_select_wsize(const struct ggml_tensor * dst, int n_tasks);
#ifdef __cplusplus
}
#endif
