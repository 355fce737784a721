#!/usr/bin/env bash
# Build and test adamas_gguf on a CUDA machine that reaches no package index (our GPU test machine).
#
#   scripts/device.sh bundle   here, with a package index: fill .device/ (git-ignored, ~6.5 MiB) with the
#                              trimmed upstream tree and the wheels the GPU machine lacks
#   scripts/device.sh build    there: install into that machine's python3 (a venv of the image's own,
#                              which holds scikit-build-core, cmake and ninja); CUDA build (CUDA_ARCHS, default 90)
#   scripts/device.sh test     there: CTest (CPU and CUDA decode tests) and the CLI on a tiny model on GPU
#
# Logs go to $OUT when it is set (the device tool brings that folder back).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=.device
LOG=${OUT:-/tmp}
PY=${PYTHON:-python3}

case "${1:-}" in
bundle)
    mkdir -p "$BUNDLE/wheels"
    [ -f "$BUNDLE/upstream.tar.xz" ] || $PY cmake/upstream.py pack "$BUNDLE/upstream.tar.xz"
    # llama-cpp-python Python-only, plus the pure-Python packages the GPU image does not have
    CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $PY -m pip wheel -q --no-deps -w "$BUNDLE/wheels" \
        "llama-cpp-python==0.3.36" "gguf==0.19.0" "diskcache==5.6.3"
    du -sh "$BUNDLE"
    ;;
build)
    $PY -m pip install -q --no-index --no-deps "$BUNDLE"/wheels/*.whl
    export ADAMAS_UPSTREAM="$PWD/$BUNDLE/upstream.tar.xz" ADAMAS_GGUF_CACHE=/tmp/adamas-cache
    export CMAKE_ARGS="-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS:-90}"
    /usr/bin/time -f "build wall %e s" $PY -m pip install -v --no-index --no-build-isolation --no-deps \
        -Ccmake.define.ADAMAS_BUILD_TESTS=ON -Cbuild-dir=build/cuda . > "$LOG/build.log" 2>&1 \
        || { tail -50 "$LOG/build.log"; exit 1; }
    tail -3 "$LOG/build.log"
    ;;
test)
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    ctest --test-dir build/cuda -j4 --output-on-failure 2>&1 | tee "$LOG/ctest.log" | tail -25
    $PY - <<'PY'
import adamas_gguf, subprocess, sys
print("loaded:", adamas_gguf._lib.loaded_libraries())
from adamas_gguf import _build_info
assert _build_info.CUDA, "not a CUDA build"
PY
    $PY models/tiny.py --out /tmp/tiny mha-d128 > /dev/null
    $PY -m adamas_gguf run /tmp/tiny/mha-d128.gguf -p "hello" -n 16 --temp 0 -ngl 99 --verbose \
        2> "$LOG/cli.log" | od -c | head -3
    grep -E "offloaded|CUDA0" "$LOG/cli.log" | head -5
    ;;
*)
    sed -n 2,10p "$0"; exit 2 ;;
esac
