"""`python -m adamas_gguf run [MODEL.gguf] -p PROMPT ...`: see cli.py, or `python -m adamas_gguf --help`."""
from __future__ import annotations

import sys

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
