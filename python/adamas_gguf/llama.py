"""`adamas_gguf.Llama`: llama_cpp.Llama running on our libraries."""
from __future__ import annotations

from ._lib import llama_cpp
from .gguf_check import check_gguf


class Llama(llama_cpp.Llama):
    """llama_cpp.Llama with the same API; existing code works by changing the import.

    Differences: flash attention is on by default (the Adamas sparse decode path needs it: V must not be
    stored transposed), and the model file is validated first, so a missing, non-GGUF or truncated file
    raises `GGUFError` (a ValueError) that says which.
    """

    def __new__(cls, model_path: str, *args, **kwargs):
        # Checked before the object exists: a half-built llama_cpp.Llama would complain in __del__.
        check_gguf(model_path)
        return super().__new__(cls)

    def __init__(self, model_path: str, *args, flash_attn: bool = True, **kwargs):
        super().__init__(model_path, *args, flash_attn=flash_attn, **kwargs)
