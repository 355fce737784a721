#!/usr/bin/env python3
"""The same model with every weight in F32: llama.cpp's own quantizer (llama_model_quantize, ftype ALL_F32,
allow_requantize) writes each quantized weight's exact value, so the model is unchanged and each matrix product
becomes an F32 dot with no activation rounding. Used to tell a backend's product arithmetic from the rest
(docs/perf-notes.md, issue 15 item 7: `adamas-crosscheck -m OUT ...` on CUDA against the CPU).

    python scripts/dequantize_f32.py MODEL.gguf OUT.gguf
"""
import sys

import adamas_gguf  # noqa: F401  (loads our libllama before llama_cpp does)
import llama_cpp


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
    p.allow_requantize = True
    rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p)
    if rc != 0:
        print(f"llama_model_quantize failed ({rc})", file=sys.stderr)
    return 1 if rc else 0


if __name__ == "__main__":
    sys.exit(main())
