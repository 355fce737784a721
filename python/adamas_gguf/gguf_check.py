"""Check that a file is a complete GGUF before llama.cpp sees it, so errors can say what is wrong.

llama.cpp itself reports only "failed to load model"; here a missing file, a file that is not GGUF and a
truncated GGUF each get their own message. The check reads the header, the metadata and the tensor table
(not the tensor data) and verifies that every tensor's bytes lie inside the file.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

GGUF_MAGIC = b"GGUF"
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """The file cannot be used as a GGUF model; the message names the file and the reason."""


class _Reader:
    def __init__(self, f, path: str, size: int):
        self.f, self.path, self.size = f, path, size

    def read(self, n: int) -> bytes:
        b = self.f.read(n)
        if len(b) != n:
            raise GGUFError(f"{self.path}: truncated GGUF (the file ends inside its header, "
                            f"at byte {self.size})")
        return b

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("Q")
        if n > self.size:
            raise GGUFError(f"{self.path}: corrupt GGUF (a string of {n} bytes in a file of {self.size})")
        return self.read(n).decode("utf-8", errors="replace")

    def value(self, vtype: int):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, n = self.unpack("I"), self.unpack("Q")
            if n > self.size:
                raise GGUFError(f"{self.path}: corrupt GGUF (an array of {n} items)")
            if etype in _SCALARS:  # skip without decoding: vocabularies are large
                self.read(n * struct.calcsize(_SCALARS[etype]))
                return None
            return [self.value(etype) for _ in range(n)]
        raise GGUFError(f"{self.path}: corrupt GGUF (unknown metadata type {vtype})")


def check_gguf(path: str | os.PathLike) -> dict:
    """Validate `path`; return {"version", "n_tensors", "architecture", "context_length"} (the last None
    if the file does not say); raise GGUFError otherwise."""
    p = Path(path)
    if not p.exists():
        raise GGUFError(f"{p}: no such file")
    if p.is_dir():
        raise GGUFError(f"{p}: is a directory, not a GGUF file")
    size = p.stat().st_size
    try:
        f = open(p, "rb")
    except OSError as e:
        raise GGUFError(f"{p}: cannot open ({e.strerror})") from e
    with f:
        r = _Reader(f, str(p), size)
        if f.read(4) != GGUF_MAGIC:
            raise GGUFError(f"{p}: not a GGUF file (it does not start with the GGUF magic)")
        version = r.unpack("I")
        if version not in (2, 3):
            raise GGUFError(f"{p}: unsupported GGUF version {version}")
        n_tensors, n_kv = r.unpack("Q"), r.unpack("Q")
        if n_tensors > size or n_kv > size:
            raise GGUFError(f"{p}: corrupt GGUF header")
        alignment, arch, ctx_lens = 32, None, {}
        for _ in range(n_kv):
            key, vtype = r.string(), r.unpack("I")
            val = r.value(vtype)
            if key == "general.alignment" and isinstance(val, int) and val > 0:
                alignment = val
            elif key == "general.architecture":
                arch = val
            elif key.endswith(".context_length") and isinstance(val, int):
                ctx_lens[key] = val
        end = 0
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.unpack("I")
            if n_dims > 8:
                raise GGUFError(f"{p}: corrupt GGUF (tensor {name!r} has {n_dims} dimensions)")
            dims = [r.unpack("Q") for _ in range(n_dims)]
            ttype, offset = r.unpack("I"), r.unpack("Q")
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
            except (ValueError, KeyError):
                raise GGUFError(f"{p}: tensor {name!r} has an unknown type {ttype}") from None
            n = 1
            for d in dims:
                n *= d
            end = max(end, offset + n // block * type_size)
        data_start = -(-f.tell() // alignment) * alignment
    if data_start + end > size:
        raise GGUFError(f"{p}: truncated GGUF ({size} bytes; its tensors need {data_start + end})")
    return {"version": version, "n_tensors": n_tensors, "architecture": arch,
            "context_length": ctx_lens.get(f"{arch}.context_length")}
