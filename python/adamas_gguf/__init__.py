"""adamas_gguf: Adamas sparse attention inside llama.cpp, for GGUF models.

Importing this package points llama-cpp-python at the libllama/libggml* built by this package (through
LLAMA_CPP_LIB_PATH) and checks that those are the libraries actually loaded.
"""
from __future__ import annotations

from ._version import __version__
from ._lib import LIB_DIR, UPSTREAM, lib, llama_cpp  # noqa: F401  (loads our libraries first)
from .adamas import AdamasParams
from .llama import Llama

__all__ = ["Llama", "AdamasParams", "LIB_DIR", "UPSTREAM", "__version__"]
