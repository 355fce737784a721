// adamas_gguf additions to libllama. Compiled into llama (see cpp/patches/0001).
#include "llama-adamas.h"

// Both are set per source file by our top-level CMakeLists.txt, so a version bump rebuilds one file.
#ifndef ADAMAS_GGUF_VERSION
#error "ADAMAS_GGUF_VERSION must be defined by the build"
#endif
#ifndef ADAMAS_GGUF_UPSTREAM
#error "ADAMAS_GGUF_UPSTREAM must be defined by the build"
#endif

const char * llama_adamas_version(void) {
    return ADAMAS_GGUF_VERSION;
}

const char * llama_adamas_upstream(void) {
    return ADAMAS_GGUF_UPSTREAM;
}
