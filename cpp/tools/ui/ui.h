// adamas_gguf: the web UI asset table tools/server reads, empty (see CMakeLists.txt here).
#pragma once

#include <array>
#include <cstddef>
#include <string>

struct llama_ui_asset {
    std::string           name; // path under the server's root
    const unsigned char * data;
    std::size_t           size;
    std::string           etag;
    std::string           type; // MIME type
};

const llama_ui_asset * llama_ui_find_asset(const std::string & name);
bool llama_ui_use_gzip();
const std::array<llama_ui_asset, 0> & llama_ui_get_assets();
