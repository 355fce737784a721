#pragma once
#include "common.cuh"

// GGML_OP_ADAMAS_ENCODE (ggml_adamas_encode and ggml_adamas_encode_set_rows)
void ggml_cuda_op_adamas_encode(ggml_backend_cuda_context & ctx, ggml_tensor * dst);
bool ggml_cuda_adamas_encode_supported(const ggml_tensor * op);
