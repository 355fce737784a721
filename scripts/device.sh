#!/usr/bin/env bash
# Build, test and benchmark adamas_gguf on a CUDA machine that reaches no package index (our GPU test machine),
# in steps that each fit a 10-minute call:
#
#   scripts/device.sh bundle    here, with a package index: fill .device/ (git-ignored, ~6.5 MiB) with the
#                               trimmed upstream tree and the wheels the GPU machine lacks
#   scripts/device.sh kernels   there: the standalone kernel harness (seconds to build): checks against scalar
#                               references, compute-sanitizer (memcheck, racecheck), kernel times, the distance
#                               kernel's ablation, N streams against one (SWEEP=1: also the sweep its plan comes from)
#   scripts/device.sh kab       there: kernel A/B in one run: HARNESS (default .device/harness) `check 42 quick`, then
#                               `bench` of HARNESS_OLD (a binary of an earlier revision, if given), of HARNESS with
#                               GGML_CUDA_PDL=0 and of HARNESS as built ($LOG/bench-ab.md)
#   scripts/device.sh ncu       there: Nsight Compute on the harness's rerank kernels (`one` at 32K MHA, pool 256 -> 64;
#                               NCU_K: a kernel regex, e.g. adamas for all): details ($LOG/ncu-rerank.txt) and the
#                               stall reasons per instruction (scripts/ncu_stalls.py: $LOG/ncu-stalls.txt)
#   scripts/device.sh build     there: install into that machine's python3 (CUDA_ARCHS, default 90; SERVER=1:
#                               with llama-server, for `load`; RPC=1: with ggml-rpc and rpc-server, for `rpc`)
#   scripts/device.sh test      there: CTest (CPU and CUDA decode tests, test-backend-ops on every Adamas case)
#   scripts/device.sh products  there: upstream's quantized products on CUDA against the CPU's (test-gpu-products -v,
#                               patch 0027) and test-backend-ops MUL_MAT for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weights
#   scripts/device.sh decodetest [SHAPE]  there: test-adamas-decode on one tiny model (default mha-d128) on CUDA,
#                               its full output kept, under each rerank and distance-scan switch
#                               (GGML_CUDA_ADAMAS_RR_CLUSTER, GGML_CUDA_ADAMAS_DIST_ASYNC), twice as built
#   scripts/device.sh two       there, on a machine of two GPUs (issue 19): the CUDA decode tests with the layers over
#                               both (llama.cpp's default split), then decode t/s on one against two GPUs in one run
#                               per model (bench-adamas-decode -ng 1,2; MODELS: 7b and/or 8b, DEPTHS 32768,131072)
#   scripts/device.sh perf      there: test-backend-ops perf of the Adamas ops and of upstream flash attention
#   scripts/device.sh passkey   there: SmolLM2 passkey answers on CPU and GPU (model: $ADAMAS_MODEL, or the
#                               parts .device/m1/smol.part.aa + .device/m2/smol.part.ab joined, sent in two calls)
#   scripts/device.sh crosscheck [ARGS]  there: adamas-crosscheck (GPU against CPU on SmolLM2, token by token over
#                               GPL-3; --ops: each Adamas node re-run on the CPU from the GPU's inputs); ARGS go to it
#   scripts/device.sh e2e       there: random 7B MHA / 8B GQA Q4_0 models, decode t/s at depth, dense vs budgets
#                               (and depth 512 with budget 1024: within the budget)
#   scripts/device.sh ab        there: the random 7B MHA at D7 (default 32768) and, with D8 set, the 8B GQA at D8, decode
#                               t/s dense vs BUDGETS (default 0,64) under each setting of SWITCHES (default: as built, then
#                               GGML_CUDA_ADAMAS_DIST_ASYNC=1 GGML_CUDA_ADAMAS_PAR_RANK=1 for v12 + v13), rows labelled
#                               ($LOG/ab.md); the harness's side: `GGML_CUDA_ADAMAS_PAR_RANK=1 scripts/device.sh kernels`
#   scripts/device.sh multi     there: N sequences decoding together (bench-adamas-decode -np), aggregate t/s,
#                               dense vs budgets; CASE picks one case (see below), each fits one call; PROFILE=1:
#                               under nsys, the GPU time per kernel
#   scripts/device.sh load      there: scripts/load_test.py, llama-server with 8 slots, 8 clients, dense vs 64
#                               (needs `SERVER=1 scripts/device.sh build`); LOAD_MODEL 7b (q8_0 cache) or 8b
#   scripts/device.sh rpc       there (needs `RPC=1 scripts/device.sh build`): an rpc-server on CUDA0 on 127.0.0.1;
#                               (a) tiny random models (or $ADAMAS_MODEL) decode through it bitwise as local CUDA,
#                               dense and budget 64 (scripts/rpc_device_check.py check: $LOG/rpc-check.md);
#                               (b) the random 7B MHA at depth 32K, decode t/s local vs through it, budgets 0 and 64,
#                               and the per-token cost of RPC ($LOG/rpc.md; RPC_BENCH=0: (a) only). CUDA's op fusion
#                               off on both sides (RPC_FUSION=1: on). DEVICE=CPU (with BUILD=the build dir,
#                               RPC_MODEL=a small GGUF, RPC_DEPTH=256) runs the same on a CPU-only machine
#
# Logs go to $OUT when it is set (the device tool brings that folder back).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=.device
LOG=${OUT:-/tmp}
PY=${PYTHON:-python3}
BUILD=${BUILD:-build/cuda}
# the random-weight model /tmp/r7b.gguf (7B MHA) or /tmp/r8b.gguf (8B GQA), written if missing (seconds)
rmodel() {
    [ -f /tmp/r$1.gguf ] || PYTHONPATH=/tmp/site:${PYTHONPATH:-} $PY models/random_llama.py /tmp/r$1.gguf \
        --shape $([ $1 = 7b ] && echo 7b-mha || echo 8b-gqa)
}

case "${1:-}" in
bundle)
    mkdir -p "$BUNDLE/wheels"
    [ -f "$BUNDLE/upstream.tar.xz" ] || $PY cmake/upstream.py pack "$BUNDLE/upstream.tar.xz"
    # llama-cpp-python Python-only, plus the pure-Python packages the GPU image does not have
    CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $PY -m pip wheel -q --no-deps -w "$BUNDLE/wheels" \
        "llama-cpp-python==0.3.36" "gguf==0.19.0" "diskcache==5.6.3"
    du -sh "$BUNDLE"
    ;;
kab)
    H=${HARNESS:-$BUNDLE/harness}
    timeout 200 $H check 42 quick | tail -2
    {
        # a bench takes over 60 s on the H200 (three cut at 60 s printed nothing there, 2026-12-07)
        if [ -n "${HARNESS_OLD:-}" ]; then echo "== $HARNESS_OLD"; timeout 150 stdbuf -oL $HARNESS_OLD bench; fi
        echo "== $H, GGML_CUDA_PDL=0"; GGML_CUDA_PDL=0 timeout 150 $H bench
        echo "== $H"; timeout 150 $H bench
    } > "$LOG/bench-ab.md" 2>&1
    ;;
kernels)
    H=ggml_adamas/tests/cuda/adamas-cuda-harness.cu
    # HARNESS: a binary built elsewhere from the same sources (nvcc takes a minute or two)
    if [ -n "${HARNESS:-}" ]; then cp "$HARNESS" /tmp/adamas-harness; else
        nvcc -O3 -std=c++17 -arch=sm_${CUDA_ARCHS:-90} -use_fast_math -lineinfo -I ggml_adamas/src/ggml-cuda "$H" -o /tmp/adamas-harness
    fi
    /tmp/adamas-harness check 42 | tail -1
    /tmp/adamas-harness check 7 | tail -1
    compute-sanitizer --tool memcheck /tmp/adamas-harness check 3 quick 2>&1 | tail -2
    compute-sanitizer --tool racecheck /tmp/adamas-harness check 5 quick 2>&1 | tail -2
    /tmp/adamas-harness bench | tee "$LOG/kernels.md"
    /tmp/adamas-harness ablate | tee "$LOG/ablate.md"
    /tmp/adamas-harness streams | tee "$LOG/streams.md" # issue 16: N streams' kernels against one
    [ -z "${SWEEP:-}" ] || /tmp/adamas-harness sweep > "$LOG/sweep.md" # SWEEP=1: the distance-kernel plan sweep
    ;;
ncu)
    H=${HARNESS:-$BUNDLE/harness}
    # --clock-control none: the clocks the op runs at; one launch of each kernel (the harness's `one` runs select +
    # attention once); NCU_K: the kernels (a regex); the report's details and its per-line source view (stall reasons)
    timeout 300 ncu --clock-control none --set full --import-source yes -k regex:"${NCU_K:-adamas_attn_(score|rerank)}" \
        -f -o /tmp/ncu-adamas $H one 32768 32 256 head 0 0 0 64 > "$LOG/ncu-run.txt" 2>&1 || true
    ncu -i /tmp/ncu-adamas.ncu-rep --page details > "$LOG/ncu-rerank.txt" 2>&1 || true
    # SASS only: the H100's ncu refused cuda,sass, and scripts/ncu_stalls.py reads the SASS view
    ncu -i /tmp/ncu-adamas.ncu-rep --page source --csv --print-source sass > "$LOG/ncu-source.csv" 2>&1 || true
    grep -E "adamas_|Duration|Warp Cycles Per Issued|Issue Slots Busy|Achieved Occupancy" "$LOG/ncu-rerank.txt" | sed -n 1,40p # not head: SIGPIPE under pipefail
    $PY scripts/ncu_stalls.py "$LOG/ncu-source.csv" --top 14 | tee "$LOG/ncu-stalls.txt"
    ;;
build)
    $PY -m pip install -q --no-index --no-deps "$BUNDLE"/wheels/*.whl
    export ADAMAS_UPSTREAM="$PWD/$BUNDLE/upstream.tar.xz" ADAMAS_GGUF_CACHE=/tmp/adamas-cache
    export CMAKE_ARGS="-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS:-90}"
    /usr/bin/time -f "build wall %e s" $PY -m pip install -v --no-index --no-build-isolation --no-deps \
        -Ccmake.define.ADAMAS_BUILD_TESTS=ON -Ccmake.define.ADAMAS_BUILD_SERVER=$([ -n "${SERVER:-}" ] && echo ON || echo OFF) \
        -Ccmake.define.ADAMAS_BUILD_RPC=$([ -n "${RPC:-}" ] && echo ON || echo OFF) \
        -Cbuild-dir=$BUILD . > "$LOG/build.log" 2>&1 \
        || { tail -50 "$LOG/build.log"; exit 1; }
    tail -3 "$LOG/build.log"
    ;;
test)
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    rc=0
    ctest --test-dir $BUILD -j8 -E "^backend-ops" --output-on-failure > "$LOG/ctest.log" 2>&1 || rc=1
    grep -m 20 -E "tests passed|FAIL|Failed" "$LOG/ctest.log" || true # not | head: with pipefail its SIGPIPE (141) ended the script before test-backend-ops (2026-12-07)
    for op in ADAMAS_ENCODE ADAMAS_SELECT ADAMAS_ATTN; do
        $BUILD/tests/cpp/test-backend-ops test -b CUDA0 -o $op > "$LOG/backend-ops-$op.log" 2>&1 || rc=1
        echo "$op: $(grep -cE '^ +'$op'.*OK' "$LOG/backend-ops-$op.log") OK, $(grep -cE '^ +'$op'.*FAIL' "$LOG/backend-ops-$op.log") FAIL, $(grep -cE 'not supported' "$LOG/backend-ops-$op.log") not supported; $(grep -E 'tests passed' "$LOG/backend-ops-$op.log")"
    done
    $PY -c "import adamas_gguf; from adamas_gguf import _build_info; assert _build_info.CUDA, 'not a CUDA build'; print('CUDA build loaded')" || rc=1
    exit $rc
    ;;
products)
    $BUILD/tests/cpp/test-gpu-products -v 2>&1 | tee "$LOG/gpu-products.txt" || echo "test-gpu-products: FAILED"
    for t in q4_0 q4_1 q5_0 q5_1 q8_0; do
        rc=0; $BUILD/tests/cpp/test-backend-ops test -b CUDA0 -o MUL_MAT -p "type_a=$t,type_b=f32" > "$LOG/mul-mat-$t.log" 2>&1 || rc=$?
        echo "MUL_MAT $t: rc $rc, $(grep -E 'tests passed' "$LOG/mul-mat-$t.log")"
    done
    ;;
decodetest)
    M=$BUILD/tests/cpp/tiny-models/${2:-mha-d128}.gguf
    [ -f "$M" ] || ctest --test-dir $BUILD -R "^tiny-models$" > /dev/null
    for sw in "" "" "GGML_CUDA_ADAMAS_RR_CLUSTER=0" "GGML_CUDA_ADAMAS_DIST_ASYNC=1"; do
        s=${sw:-default}; f="$LOG/decodetest-${2:-mha-d128}-${s//=/-}.txt"
        rc=0; env $sw $BUILD/tests/cpp/test-adamas-decode "$M" 99 > "$f" 2>&1 || rc=$?
        echo "${sw:-as built}: rc $rc, $(grep -c FAIL "$f") failed checks"; grep FAIL "$f" | head -5 || true
    done
    ;;
two)
    nvidia-smi -L
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-} # as before: for any Python the tests' fixtures run
    rc=0
    ctest --test-dir $BUILD -j4 -R "adamas-decode-cuda|^decode-cuda" --output-on-failure > "$LOG/ctest-two.log" 2>&1 || rc=1
    grep -m 20 -E "tests passed|FAIL|Failed" "$LOG/ctest-two.log" || true
    for m in ${MODELS:-7b 8b}; do
        rmodel $m
        $BUILD/tests/cpp/bench-adamas-decode -m /tmp/r$m.gguf -d ${DEPTHS:-32768,131072} -b 0,64 -n 32 -r 2 -ng 1,2 \
            | tee -a "$LOG/two.md" || rc=1
    done
    exit $rc
    ;;
perf)
    # PERF_KV: the cache sizes to time, a regex (default all three: 8192|32768|131072)
    KV=${PERF_KV:-8192|32768|131072}
    for op in ADAMAS_ENCODE ADAMAS_SELECT ADAMAS_ATTN FLASH_ATTN_EXT; do
        if [ $op = FLASH_ATTN_EXT ]; then
            P="hsk=128,hsv=128,nh=(32|8),nr23=\[(1|4),1\],kv=($KV),nb=1,mask=1,sinks=0,max_bias=0.000000,logit_softcap=0.000000,prec=f32,type_K=f16"
        else
            P="n_kv=($KV),|n_cells|ne=\[32"
        fi
        $BUILD/tests/cpp/test-backend-ops perf -b CUDA0 -o $op -p "$P" 2>&1 | grep -E "^ +$op\(" \
            | sed -E 's/\x1b\[[0-9;]*m//g; s/ +/ /g' | tee -a "$LOG/perf.txt"
    done
    ;;
passkey)
    if [ -z "${ADAMAS_MODEL:-}" ]; then
        export ADAMAS_MODEL=/tmp/smollm2.gguf
        [ -f $ADAMAS_MODEL ] || cat /tmp/smol.part.aa $BUNDLE/m2/smol.part.ab > $ADAMAS_MODEL # part aa: an earlier call's
    fi
    sha256sum $ADAMAS_MODEL
    $PY scripts/passkey_devices.py "$ADAMAS_MODEL" ${PASSKEY_ARGS:-} | tee "$LOG/passkey.md"
    ;;
crosscheck)
    shift
    M=${ADAMAS_MODEL:-/tmp/smollm2.gguf}
    [ -f $M ] || cat /tmp/smol.part.aa $BUNDLE/m2/smol.part.ab > $M
    $BUILD/tests/cpp/adamas-crosscheck -m $M --text $BUNDLE/GPL-3 -t 16 "$@" 2>&1 | grep -v '^\.*$' | tee -a "$LOG/crosscheck.md"
    ;;
e2e)
    rmodel 7b; rmodel 8b
    B=$BUILD/tests/cpp/bench-adamas-decode
    # within the budget (the step must be upstream's), then the depths
    # RERANK: the selections timed at each budget (default: the plain code selection and rerank 4)
    R=${RERANK:-1,4}
    $B -m /tmp/r7b.gguf -d 512 -b 0,1024 -n 64 -r 5 --rerank $R | tee -a "$LOG/e2e.md"
    $B -m /tmp/r7b.gguf -d ${D7:-8192,32768,65536} -b ${BUDGETS:-0,64,256} -n 64 -r 3 --rerank $R | tee -a "$LOG/e2e.md"
    $B -m /tmp/r8b.gguf -d ${D8:-32768,131072} -b ${BUDGETS:-0,64,256} -n 64 -r 3 --rerank $R | tee -a "$LOG/e2e.md"
    ;;
ab)
    rmodel 7b; [ -z "${D8:-}" ] || rmodel 8b
    SWITCHES=${SWITCHES:-"-;GGML_CUDA_ADAMAS_DIST_ASYNC=1 GGML_CUDA_ADAMAS_PAR_RANK=1"}
    IFS=';' read -ra SW <<< "$SWITCHES"
    for m in 7b ${D8:+8b}; do
        d=$([ $m = 7b ] && echo ${D7:-32768} || echo $D8)
        for sw in "${SW[@]}"; do # alternating settings, one model load each: the same machine state for both
            label=$([ "$sw" = - ] && echo "as built" || echo "$sw")
            env ${sw#-} $BUILD/tests/cpp/bench-adamas-decode -m /tmp/r$m.gguf -d $d -b ${BUDGETS:-0,64} -n 32 -r 2 2>&1 \
                | grep -E "^\| r" | sed "s/^/| $label /" | tee -a "$LOG/ab.md"
        done
    done
    ;;
multi)
    # issue 16 item 3: f16 KV, the default selection; -n 16 decode steps of all N sequences, 3 rounds
    rmodel 7b; rmodel 8b
    B="$BUILD/tests/cpp/bench-adamas-decode -n 16 -r 3"
    # PROFILE=1: under Nsight Systems (one round of 8 steps), then the GPU time per kernel ($LOG/multi-kern.csv):
    # where a sparse step of N sequences spends the time its bytes do not explain (perf-notes, issue 16)
    if [ -n "${PROFILE:-}" ]; then
        command -v nsys > /dev/null || { echo "PROFILE=1: nsys is not on this machine"; exit 2; }
        B="nsys profile -t cuda --cuda-graph-trace=node -f true -o /tmp/multi-prof $BUILD/tests/cpp/bench-adamas-decode -n 8 -r 1"
    fi
    case "${CASE:-7b}" in
    7b)      $B -m /tmp/r7b.gguf -d 32768 -np 4 -b 0,64,256 ;;          # per-sequence caches
    7b-kvu)  $B -m /tmp/r7b.gguf -d 32768 -np 4 -b 0,64,256 -kvu ;;     # one unified cache
    7b-mix)  $B -m /tmp/r7b.gguf -d 32768 -np 4 -b 0,64 --mixed 1 --chunk 512 ;; # 3 decode, 1 prefills
    8b)      $B -m /tmp/r8b.gguf -d 32768 -np 8 -b 0,64,256 ;;
    8b-128k) $B -m /tmp/r8b.gguf -d 131072 -np 4 -b 0,64,256 ;;
    8b-8k)   $B -m /tmp/r8b.gguf -d 8192 -np 16 -b 0,64,256 ;;
    within)  $B -m /tmp/r8b.gguf -d 512 -np 8 -b 0,1024 -r 5 ;;         # every sequence within the budget
    *) echo "CASE: 7b 7b-kvu 7b-mix 8b 8b-128k 8b-8k within"; exit 2 ;;
    esac 2>&1 | tee -a "$LOG/multi-${CASE:-7b}.md"
    if [ -n "${PROFILE:-}" ]; then
        nsys stats -r cuda_gpu_kern_sum -f csv /tmp/multi-prof.nsys-rep > "$LOG/multi-kern.csv" 2>/dev/null || true
        grep -iE "adamas|flash|mul_mat|Time" "$LOG/multi-kern.csv" | head -20 | cut -c1-200
    fi
    ;;
load)
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
    SRV=$($PY -c "import adamas_gguf._build_info as b, pathlib; print(pathlib.Path(b.__file__).parent / 'bin/llama-server')")
    if [ "${LOAD_MODEL:-7b}" = 7b ]; then
        rmodel 7b
        # 8 x 32K of f16 K and V is 128 GiB for the 7B MHA: a q8_0 cache (68 GiB) fits beside the weights
        M=/tmp/r7b.gguf; X="--server-arg=-ctk --server-arg=q8_0 --server-arg=-ctv --server-arg=q8_0"
    else
        rmodel 8b
        M=/tmp/r8b.gguf; X=""
    fi
    $PY scripts/load_test.py -m $M --server "$SRV" -np 8 --clients 8 --prompt-tokens ${PROMPT_TOKENS:-32000} \
        --slot-ctx 32768 -n ${NPRED:-128} -ngl 99 --budgets 0,64 --logs "$LOG" --json "$LOG/load-${LOAD_MODEL:-7b}.json" $X \
        ${CHECK:+--check-dense} 2>&1 | tee -a "$LOG/load-${LOAD_MODEL:-7b}.md"
    ;;
rpc)
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
    DEV=${DEVICE:-CUDA0}; PORT=${RPC_PORT:-50052}; EP=127.0.0.1:$PORT
    [ "$DEV" = CPU ] && LOCAL=cpu || LOCAL=cuda
    # CUDA fuses adjacent nodes within a graph split, and the RPC client splits where a local graph does not: with
    # fusion on, dense itself differs from local by ~1e-4 through RPC (perf-notes). Off on both sides, the check is
    # bitwise; RPC_FUSION=1 keeps upstream's default.
    [ -n "${RPC_FUSION:-}" ] || export GGML_CUDA_DISABLE_FUSION=1
    $PY -c "import adamas_gguf._build_info as b; assert b.RPC, 'built without RPC: RPC=1 scripts/device.sh build'"
    # the server in the background, stopped (by its process id) however this ends
    $PY -m adamas_gguf rpc-server --host 127.0.0.1 --port $PORT --device $DEV > "$LOG/rpc-server.log" 2>&1 &
    SRV=$!
    trap 'kill $SRV 2>/dev/null; wait $SRV 2>/dev/null || true' EXIT
    $PY - $PORT $SRV <<'PYEOF' || { tail -20 "$LOG/rpc-server.log"; exit 1; }
import os, socket, sys, time
port, pid = int(sys.argv[1]), int(sys.argv[2])
for _ in range(600):  # a connection accepted: listening (the server reads EOF and goes on)
    os.kill(pid, 0)  # raises if the server is gone
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close(); sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("rpc-server did not listen within 60 s")
PYEOF
    echo "rpc-server on $DEV at $EP (pid $SRV)"
    [ "$LOCAL" = cpu ] || nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    rc=0
    $PY scripts/rpc_device_check.py check --server $EP --device $LOCAL ${CHECK_ARGS:-} 2>&1 | tee "$LOG/rpc-check.md" || rc=1
    if [ "${RPC_BENCH:-1}" != 0 ]; then # RPC_BENCH=0: the check alone
        M=${RPC_MODEL:-/tmp/r7b.gguf}
        [ -f $M ] || $PY models/random_llama.py $M --shape 7b-mha
        $PY scripts/rpc_device_check.py bench --server $EP --bench $BUILD/tests/cpp/bench-adamas-decode --model $M \
            --depth ${RPC_DEPTH:-32768} --budgets ${BUDGETS:-0,64} -n ${RPC_N:-64} --reps ${RPC_REPS:-3} \
            --threads ${RPC_THREADS:-0} --out "$LOG/rpc.md" > /dev/null || rc=1
        cat "$LOG/rpc.md"
    fi
    kill -0 $SRV || { echo "FAIL: the rpc-server died"; rc=1; }
    exit $rc
    ;;
*)
    sed -n 2,35p "$0"; exit 2 ;;
esac
