"""The user cache folder and file hashing, shared by the package and the build (cmake/upstream.py loads
this file directly, without importing the package, which would load libraries).

Standard library only."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

ENV_CACHE = "ADAMAS_GGUF_CACHE"


def cache_dir() -> Path:
    """$ADAMAS_GGUF_CACHE, else $XDG_CACHE_HOME/adamas_gguf, else ~/.cache/adamas_gguf."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "adamas_gguf"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
