// adamas_gguf: Adamas sparse attention for llama.cpp. Plain C API, exported by libllama.
#pragma once

#include "llama.h"

#ifdef __cplusplus
extern "C" {
#endif

// Version of adamas_gguf this library was built from, e.g. "0.1.0".
LLAMA_API const char * llama_adamas_version(void);

// The upstream it was built from, e.g. "llama-cpp-python 0.3.36 (llama.cpp 0c1e57098)".
LLAMA_API const char * llama_adamas_upstream(void);

#ifdef __cplusplus
}
#endif
