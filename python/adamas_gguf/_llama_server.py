"""`llama-server`: upstream's llama-server built from our patched tree (with the --adamas-* flags).

The binary is adamas_gguf/bin/llama-server, next to the libraries it loads (lib/); this command replaces
itself with it (os.execv), so the process id, signals and exit code are the server's own.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

BIN = Path(__file__).resolve().parent / "bin" / "llama-server"


def main() -> int:
    if not BIN.is_file():
        print("llama-server: error: this adamas_gguf install was built without llama-server; build it with "
              "`make server` (or pip install with -Ccmake.define.ADAMAS_BUILD_SERVER=ON)", file=sys.stderr)
        return 1
    os.execv(BIN, [str(BIN), *sys.argv[1:]])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
