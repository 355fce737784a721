#pragma once

// CPU kernel of GGML_OP_ADAMAS_ENCODE (ggml-adamas.h).

#include "ggml.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ggml_compute_params;

void ggml_compute_forward_adamas_encode(const struct ggml_compute_params * params, struct ggml_tensor * dst);

#ifdef __cplusplus
}
#endif
