"""Layers on rpc-servers (ggml's RPC backend, a build with ADAMAS_BUILD_RPC), against the same model run locally.

Servers are `python -m adamas_gguf rpc-server` subprocesses on free ports of 127.0.0.1, stopped by their own
process ids. A server's CPU backend runs the same kernels as the local one, so every step's logits must be
bitwise the local ones: dense, and with Adamas (budget 64, the default selection, a prompt past the budget,
sparse steps counted; a q8_0 cache, a context shift, two sequences after seq_cp), through one server and with
the layers split over two. A server that cannot run our ops
(GGML_RPC_ADAMAS_TEST_WIRE makes it announce another wire version, or none, as upstream's rpc-server) must turn
Adamas off for its layers, with the reason, and decode exactly as local dense: never crash.
"""
from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import adamas_gguf
from adamas_gguf import _build_info, _lib, rpc
from adamas_gguf.cli import base as cli_base

from conftest import cli_env, run_cli

pytestmark = pytest.mark.skipif(not _build_info.RPC,
                                reason="built without RPC (ADAMAS_BUILD_RPC=ON; `make test` and `make rpc` build it)")

BUDGET = 64
PROMPT = 100  # tokens, past the budget: every decode step after it is sparse
STEPS = 24
N_CTX = 512
THREADS = 1  # the server and the client each: on 2 cores neither waits for a descheduled thread


# upstream's rpc-server built from the pinned llama.cpp alone (no Adamas patches), in the build tree
UPSTREAM_RPC_SERVER = getattr(_build_info, "UPSTREAM_RPC_SERVER", "")
needs_upstream = pytest.mark.skipif(not UPSTREAM_RPC_SERVER, reason="no unpatched upstream rpc-server in this build "
                                    "(-Ccmake.define.ADAMAS_BUILD_UPSTREAM_RPC=ON; `make test` builds it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m adamas_gguf rpc-server` on a free port; wire: GGML_RPC_ADAMAS_TEST_WIRE (None: the real one);
    refuse: GGML_RPC_ADAMAS_TEST_REFUSE (an op its device then says it cannot run)."""

    def __init__(self, tmp_path: Path, wire: str | None = None, refuse: str | None = None, timeout: float = 60,
                 binary: str | None = None):
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.log = tmp_path / f"rpc-server-{self.port}.log"
        env = cli_env()
        if wire is not None:
            env["GGML_RPC_ADAMAS_TEST_WIRE"] = wire
        if refuse is not None:
            env["GGML_RPC_ADAMAS_TEST_REFUSE"] = refuse
        with open(self.log, "wb") as f:
            # binary: an rpc-server executable (upstream's flags: 127.0.0.1 by default)
            cmd = ([binary, "-p", str(self.port), "-t", str(THREADS)] if binary else
                   [sys.executable, "-m", "adamas_gguf", "rpc-server", "--port", str(self.port), "-t", str(THREADS)])
            self.proc = subprocess.Popen(cmd,
                                         stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout
        while True:  # listening: a connection is accepted (the server reads EOF from it and goes on)
            if self.proc.poll() is not None:
                raise RuntimeError(f"rpc-server exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"rpc-server did not listen within {timeout} s: {self.log.read_text()}")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def alive(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two servers of this build, one announcing another wire version, one acting as upstream's (no Adamas), one
    refusing an op; and upstream's own, unpatched (ADAMAS_BUILD_UPSTREAM_RPC, `make test`), when built."""
    d = tmp_path_factory.mktemp("rpc")
    s = {"a": Server(d), "b": Server(d), "v2": Server(d, wire="2"), "none": Server(d, wire="none"),
         "refuse": Server(d, refuse="ADAMAS_SELECT")}
    if UPSTREAM_RPC_SERVER:
        s["upstream"] = Server(d, binary=UPSTREAM_RPC_SERVER)
    yield s
    for srv in s.values():
        srv.stop()


def prompt_tokens(n: int, n_vocab: int, seed: int = 3) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(3, n_vocab, size=n)]  # past the control tokens


def last_logits(llm) -> np.ndarray:
    ptr = adamas_gguf.llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def trace(llm, toks: list[int], steps: int = STEPS):
    """Logits of the prompt's last token and of each greedy decode step, and the sparse steps taken."""
    llm.reset()
    s0 = llm.adamas_sparse_steps
    llm.eval(toks)
    rows = [last_logits(llm)]
    for _ in range(steps):
        llm.eval([int(np.argmax(rows[-1]))])
        rows.append(last_logits(llm))
    return np.stack(rows), llm.adamas_sparse_steps - s0


def _continue(llm, state, rows: np.ndarray, steps: int = 4) -> np.ndarray:
    """Loads a saved state (into llm's context) and decodes `steps` greedy tokens on from rows' last logits;
    the codes must then equal K's encoding."""
    llm.load_state(state)
    out = [rows[-1]]
    for _ in range(steps):
        llm.eval([int(np.argmax(out[-1]))])
        out.append(last_logits(llm))
    assert llm.adamas_verify_codes() == 0
    return np.stack(out[1:])


def trace_then_reload(llm, toks: list[int]):
    """trace(), then a state save and load and one more step: a context decoding dense while past the budget
    leaves its codes stale, and nothing may try to rebuild them on the device that refused them."""
    got, steps = trace(llm, toks)
    _continue(llm, llm.save_state(), got, steps=1)
    return got, steps


def load(model: Path, budget: int, **kw):
    return adamas_gguf.Llama(str(model), n_ctx=N_CTX, n_threads=THREADS, n_threads_batch=THREADS, seed=1,
                             budget=budget, verbose=False, **kw)


@pytest.fixture(scope="module")
def local_traces(tiny_model):
    """The tiny model (4 layers, MHA, head_dim 64) run locally: dense and budget 64."""
    out = {}
    for budget in (0, BUDGET):
        llm = load(tiny_model, budget)
        toks = prompt_tokens(PROMPT, llm.n_vocab())
        out[budget] = trace(llm, toks) + (toks,)
        llm.close()
    assert out[BUDGET][1] == STEPS, "the local run took no sparse steps"
    return out


# ---- the build and the command -----------------------------------------------------------------------------


def test_installed():
    binary = Path(_build_info.__file__).parent / "bin" / "ggml-rpc-server"
    assert binary.is_file(), f"{binary}: built with ADAMAS_BUILD_RPC but not installed"
    assert (Path(adamas_gguf.LIB_DIR) / "libggml-rpc.so").is_file()
    assert rpc.available()


def test_constants_match_the_build():
    header = (Path(adamas_gguf.LIB_DIR).parent / "include" / "ggml-rpc.h").read_text()
    version = tuple(int(re.search(rf"#define RPC_PROTO_{k}_VERSION\s+(\d+)", header).group(1))
                    for k in ("MAJOR", "MINOR", "PATCH"))
    assert version == rpc.RPC_PROTO_VERSION
    assert int(re.search(r"#define GGML_RPC_MAX_SERVERS\s+(\d+)", header).group(1)) == rpc.GGML_RPC_MAX_SERVERS
    assert adamas_gguf.llama_cpp.llama_max_devices() == cli_base.MAX_DEVICES


def test_help_says_no_authentication(cli):
    r = cli("rpc-server", "--help")
    assert r.returncode == 0, r.stderr
    assert "no authentication" in " ".join(r.stdout.split()) and "127.0.0.1" in r.stdout
    for command in ("run", "serve"):
        r = cli(command, "--help")
        flat = " ".join(r.stdout.split())
        for flag in ("--rpc", "--split-mode", "--tensor-split", "--main-gpu", "no authentication"):
            assert flag in flat, (command, flag)


@pytest.mark.parametrize("args, code, words", [
    (["--port", "0"], 2, "--port/-p: 0 is out of range"),
    (["--port", "x"], 2, "invalid integer"),
    (["--host", "1.2.3.4:5"], 2, "is not a host name"),
    (["-t", "0"], 2, "-t/--threads: 0 is out of range"),
    (["--device", "NOPE0"], 1, "no device NOPE0 in this build; its devices: CPU"),
    (["--bogus"], 2, "unrecognized arguments: --bogus"),
])
def test_server_bad_flags(cli, args, code, words):
    r = cli("rpc-server", *args, timeout=60)
    assert r.returncode == code and words in r.stderr, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_handshake(servers):
    assert rpc.handshake(servers["a"].endpoint) == {"version": rpc.RPC_PROTO_VERSION, "adamas": True}
    assert rpc.handshake(servers["v2"].endpoint)["adamas"] is True  # the version comes in Adamas' own hello
    assert rpc.handshake(servers["none"].endpoint) == {"version": rpc.RPC_PROTO_VERSION, "adamas": False}


@needs_upstream
def test_handshake_upstream(servers):
    assert Path(UPSTREAM_RPC_SERVER).is_file(), UPSTREAM_RPC_SERVER
    assert rpc.handshake(servers["upstream"].endpoint) == {"version": rpc.RPC_PROTO_VERSION, "adamas": False}


# ---- bad client input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, words", [
    ("localhost", "is not host:port"),
    ("127.0.0.1:0", "port must be a number from 1 to 65535"),
    ("127.0.0.1:99999", "port must be a number from 1 to 65535"),
    ("127.0.0.1:1,", "an empty server entry"),
    ("127.0.0.1:5,127.0.0.1:5", "127.0.0.1:5 is given twice"),
    ([1], "must be a string"),
])
def test_bad_rpc_servers_refused_before_loading(spec, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        adamas_gguf.Llama("/nonexistent.gguf", rpc_servers=spec)  # the servers first, the file after


def test_nothing_listening(tiny_model):
    port = free_port()
    with pytest.raises(rpc.RPCError, match=f"rpc-server 127.0.0.1:{port}: cannot connect"):
        adamas_gguf.Llama(str(tiny_model), rpc_servers=f"127.0.0.1:{port}", verbose=False)


def test_busy_server_times_out(servers, monkeypatch):
    # a server serves one client at a time: without the handshake's timeout, llama.cpp would wait forever
    blocker = socket.create_connection(("127.0.0.1", servers["b"].port))
    try:
        blocker.sendall(bytes([rpc.RPC_CMD_HELLO]) + (24).to_bytes(8, "little") + bytes(24))
        blocker.recv(36)
        with pytest.raises(rpc.RPCError, match="is another client connected"):
            rpc.handshake(servers["b"].endpoint, timeout=1)
    finally:
        blocker.close()


# ---- equal to local ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [0, BUDGET])
def test_one_server_equals_local(servers, tiny_model, local_traces, budget):
    want, want_steps, toks = local_traces[budget]
    llm = load(tiny_model, budget, rpc_servers=servers["a"].endpoint)
    try:
        assert len(llm.rpc_devices) == 1 and llm.rpc_devices[0].startswith("RPC"), llm.rpc_devices
        assert llm.adamas_unavailable_reason is None
        got, steps = trace(llm, toks)
        if budget:
            assert llm.adamas_n_sparse_layers == 2
            assert llm.adamas_verify_codes() == 0  # the codes in the server's K buffer, read back
    finally:
        llm.close()
    assert steps == want_steps
    assert np.array_equal(got, want), f"max |diff| {np.abs(got - want).max()}"


def test_two_servers_equal_local(servers, tiny_model, local_traces):
    want, want_steps, toks = local_traces[BUDGET]
    llm = load(tiny_model, BUDGET, rpc_servers=[servers["a"].endpoint, servers["b"].endpoint],
               tensor_split=[1, 1])
    try:
        assert len(llm.rpc_devices) == 2
        assert llm.adamas_unavailable_reason is None and llm.adamas_n_sparse_layers == 2
        got, steps = trace(llm, toks)
    finally:
        llm.close()
    assert steps == want_steps == STEPS
    assert np.array_equal(got, want), f"max |diff| {np.abs(got - want).max()}"


@pytest.mark.parametrize("wire, words", [
    ("v2", "speaks Adamas wire version 2, this client 1"),
    ("none", "has no Adamas kernels"),
    # the same version, but its device refuses an op (as a GPU's kernels may): asked per op, over the wire
    ("refuse", "RPC0 cannot run ADAMAS_SELECT"),
    # upstream's own rpc-server, unpatched: it would abort at the first Adamas node it got
    pytest.param("upstream", "has no Adamas kernels", marks=needs_upstream),
])
def test_server_without_our_adamas_decodes_dense(servers, tiny_model, local_traces, wire, words):
    dense, _, toks = local_traces[0]
    ep = servers[wire].endpoint
    llm = load(tiny_model, BUDGET, rpc_servers=ep)
    try:
        reason = llm.adamas_unavailable_reason
        assert reason and words.replace("RPC0", llm.rpc_devices[0]) in reason, reason
        assert ep in reason or "the server's CPU cannot run ADAMAS_SELECT for these shapes" in reason, reason
        assert llm.adamas_n_sparse_layers == 0
        got, steps = trace_then_reload(llm, toks)
    finally:
        llm.close()
    assert steps == 0
    assert np.array_equal(got, dense), f"max |diff| {np.abs(got - dense).max()}"
    assert servers[wire].alive()


def test_layers_split_over_good_and_bad_server(servers, tiny_model, local_traces):
    # 2:3 of the 5 offloaded slots (4 layers and the output): layers 0-1 on the first server, 2-3 (the ones
    # Adamas would make sparse) on the one that cannot run it, so all decode dense, as local dense
    dense, _, toks = local_traces[0]
    llm = load(tiny_model, BUDGET, rpc_servers=[servers["a"].endpoint, servers["none"].endpoint],
               tensor_split=[2, 3])
    try:
        assert "has no Adamas kernels" in (llm.adamas_unavailable_reason or "")
        got, steps = trace(llm, toks)
    finally:
        llm.close()
    assert steps == 0
    assert np.array_equal(got, dense)


def test_only_the_bad_servers_layers_dense(servers, tiny_model):
    # 1:1 of the 5 offloaded slots: layers 0-2 on the good server, 3 on the one without Adamas: layer 2 runs
    # sparse, layer 3 dense, and the library says which
    llm = load(tiny_model, BUDGET, rpc_servers=[servers["a"].endpoint, servers["none"].endpoint],
               tensor_split=[1, 1])
    try:
        assert llm.adamas_unavailable_reason is None
        assert llm.adamas_n_sparse_layers == 1
        off = llm.adamas_refused_layers
        assert list(off) == [3] and "has no Adamas kernels" in off[3], off
        assert llm.adamas_layer_reasons[2] is None
        got, steps = trace(llm, prompt_tokens(PROMPT, llm.n_vocab()))
        assert llm.adamas_verify_codes() == 0
    finally:
        llm.close()
    assert steps == STEPS and np.isfinite(got).all()
    assert servers["none"].alive() and servers["a"].alive()


def test_default_model_equals_local(servers, default_model):
    toks = None
    results = []
    for servers_arg in (None, servers["a"].endpoint):
        llm = load(default_model, BUDGET, **({} if servers_arg is None else {"rpc_servers": servers_arg}))
        try:
            if toks is None:
                toks = llm.tokenize(("The quick brown fox jumps over the lazy dog. " * 12).encode())
                assert len(toks) > BUDGET
            results.append(trace(llm, toks, steps=12))
        finally:
            llm.close()
    (want, want_steps), (got, steps) = results
    assert want_steps == steps == 12
    assert np.array_equal(got, want), f"max |diff| {np.abs(got - want).max()}"


SM_TENSOR_WORDS = "split mode tensor (-sm tensor): the Adamas ops have no rule to split over the devices"


def test_split_mode_tensor_adamas_off(servers, tiny_model, local_traces):
    # -sm tensor over two servers: the KV cache on upstream's meta device, which has no split rule for our ops
    # (it aborted at the first code write). Adamas is off with the reason, and the decode is the dense
    # tensor-parallel one, bitwise
    sm = dict(rpc_servers=[servers["a"].endpoint, servers["b"].endpoint],
              split_mode=adamas_gguf.llama_cpp.LLAMA_SPLIT_MODE_TENSOR)
    _, _, toks = local_traces[0]
    llm = load(tiny_model, 0, **sm)
    try:
        dense_tp, _ = trace(llm, toks)
    finally:
        llm.close()
    llm = load(tiny_model, BUDGET, **sm)
    try:
        reason = llm.adamas_unavailable_reason
        assert reason and SM_TENSOR_WORDS in reason, reason
        assert llm.adamas_n_sparse_layers == 0 and llm.adamas_refused_layers == {}
        assert all(SM_TENSOR_WORDS in r for r in llm.adamas_layer_reasons[2:]), llm.adamas_layer_reasons
        got, steps = trace_then_reload(llm, toks)
    finally:
        llm.close()
    assert steps == 0
    assert np.array_equal(got, dense_tp), f"max |diff| {np.abs(got - dense_tp).max()}"
    # and the dense tensor-parallel decode is the local one up to the order of its sums
    dense = local_traces[0][0]
    assert np.allclose(got, dense, rtol=0, atol=1e-3 * np.abs(dense).max()), np.abs(got - dense).max()


# ---- the cache's other paths: q8_0, a context shift, seq_cp ------------------------------------------------


def test_q8_0_cache_equals_local(servers, tiny_model):
    # a quantized K/V: the codes are written from dequantized K, on the server's CPU as on the local one
    q8 = dict(type_k=adamas_gguf.llama_cpp.GGML_TYPE_Q8_0, type_v=adamas_gguf.llama_cpp.GGML_TYPE_Q8_0)
    out = []
    for extra in ({}, {"rpc_servers": servers["a"].endpoint}):
        llm = load(tiny_model, BUDGET, **q8, **extra)
        try:
            assert llm.adamas_unavailable_reason is None and llm.adamas_n_sparse_layers == 2
            got, steps = trace(llm, prompt_tokens(PROMPT, llm.n_vocab()))
            assert llm.adamas_verify_codes() == 0
        finally:
            llm.close()
        out.append((got, steps))
    (want, want_steps), (got, steps) = out
    assert steps == want_steps == STEPS
    assert np.array_equal(got, want), f"max |diff| {np.abs(got - want).max()}"


class Ctx:
    """A context of its own on llm's model, for what llama_cpp.Llama does not expose: several sequences
    (n_seq_max 2, unified cache or one stream per sequence) and explicit positions."""

    def __init__(self, llm, unified: bool, budget: int = BUDGET, cb_eval=None):
        lc = adamas_gguf.llama_cpp
        cp = lc.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 2*N_CTX, N_CTX, N_CTX, 2
        cp.kv_unified = unified
        cp.n_threads = cp.n_threads_batch = THREADS
        cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
        if cb_eval is not None:  # the scheduler's eval callback (a ggml_backend_sched_eval_callback, kept alive by the caller)
            cp.cb_eval = cb_eval
        self.lc, self.n_vocab = lc, llm.n_vocab()
        self.ctx = lc.llama_init_from_model(llm.model, cp)
        assert self.ctx, "llama_init_from_model failed"
        assert _lib.llama_adamas_set(self.ctx, adamas_gguf.AdamasParams(budget=budget).to_c()) == 0
        self.mem = lc.llama_get_memory(self.ctx)

    def decode(self, items: list[tuple[int, int, int]]) -> list[np.ndarray]:
        """Decodes (token, pos, seq) items as one batch; the logits of each."""
        b = self.lc.llama_batch_init(len(items), 0, 1)
        try:
            for i, (tok, pos, seq) in enumerate(items):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, True
                b.seq_id[i][0] = seq
            b.n_tokens = len(items)
            assert self.lc.llama_decode(self.ctx, b) == 0
        finally:
            self.lc.llama_batch_free(b)
        return [np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,)).copy()
                for i in range(len(items))]

    def prompt(self, toks: list[int], seq: int = 0) -> np.ndarray:
        return self.decode([(t, i, seq) for i, t in enumerate(toks)])[-1]

    @property
    def sparse_steps(self) -> int:
        return _lib.llama_adamas_n_sparse_steps(self.ctx)

    def verify_codes(self) -> int:
        return _lib.llama_adamas_verify_codes(self.ctx)

    def close(self) -> None:
        self.lc.llama_free(self.ctx)


def _one_or_two(servers, two: bool) -> tuple:
    """rpc_servers and the split for _with_ctx: server a alone, or a and b with the layers split 1:1 (layers 0-2 on
    the first, 3 and the output on the second: the sparse layers 2 and 3 on different servers, each with its own
    layers' codes)."""
    if two:
        return [servers["a"].endpoint, servers["b"].endpoint], {"tensor_split": [1, 1]}
    return servers["a"].endpoint, {}


def _with_ctx(model: Path, servers_arg, unified: bool, body, **kw):
    llm = load(model, 0, **({} if servers_arg is None else {"rpc_servers": servers_arg}), **kw)
    c = Ctx(llm, unified)
    try:
        return body(c)
    finally:
        c.close()
        llm.close()


@pytest.mark.parametrize("two", [False, True], ids=["one-server", "two-servers"])
def test_context_shift_equals_local(servers, tiny_model, two):
    # drop positions [10, 30) and move the rest back by 20 (the K rope shift and the codes' re-encode both run
    # on the server); 84 cells stay, past the budget, so the steps after the shift are sparse too
    def body(c: Ctx):
        toks = prompt_tokens(PROMPT, c.n_vocab)
        rows = [c.prompt(toks)]
        pos = PROMPT
        for _ in range(4):
            rows += c.decode([(int(np.argmax(rows[-1])), pos, 0)])
            pos += 1
        assert c.lc.llama_memory_seq_rm(c.mem, 0, 10, 30)
        c.lc.llama_memory_seq_add(c.mem, 0, 30, pos, -20)
        pos -= 20
        for _ in range(8):
            rows += c.decode([(int(np.argmax(rows[-1])), pos, 0)])
            pos += 1
        assert c.verify_codes() == 0  # the codes of the shifted keys
        return np.stack(rows), c.sparse_steps

    want, want_steps = _with_ctx(tiny_model, None, True, body)
    # two: each server re-ropes and re-encodes its own layers
    eps, kw = _one_or_two(servers, two)
    got, steps = _with_ctx(tiny_model, eps, True, body, **kw)
    assert steps == want_steps == 12
    assert np.array_equal(got, want), f"max |diff| {np.abs(got - want).max()}"


@pytest.mark.parametrize("two", [False, True], ids=["one-server", "two-servers"])
@pytest.mark.parametrize("unified", [False, True], ids=["streams", "unified"])
def test_seq_cp_two_sequences_equal_local(servers, tiny_model, unified, two):
    # sequence 1 copied from 0 (one stream each: K, V and the codes copied on the server; unified: shared cells),
    # then both decoded together with their own tokens
    def body(c: Ctx):
        toks = prompt_tokens(PROMPT, c.n_vocab)
        last = c.prompt(toks)
        c.lc.llama_memory_seq_cp(c.mem, 0, 1, -1, -1)
        t = int(np.argmax(last))
        first = c.decode([(t, PROMPT, 0), (t, PROMPT, 1)])
        # the copy is the same cache: the same token gives the same logits, bitwise
        assert np.array_equal(first[0], first[1])
        rows = [np.stack(first)]
        for i in range(1, 8):
            # sequence 1 goes its own way: its second-best token
            nxt = [int(np.argmax(rows[-1][0])), int(np.argsort(rows[-1][1])[-2])]
            rows.append(np.stack(c.decode([(nxt[0], PROMPT + i, 0), (nxt[1], PROMPT + i, 1)])))
        assert c.verify_codes() == 0
        return np.stack(rows), c.sparse_steps

    want, want_steps = _with_ctx(tiny_model, None, unified, body)
    eps, kw = _one_or_two(servers, two)
    got, steps = _with_ctx(tiny_model, eps, unified, body, **kw)
    assert steps == want_steps and steps > 0
    assert not np.array_equal(got[-1][0], got[-1][1])  # the sequences did part
    assert np.array_equal(got, want), f"max |diff| {np.abs(got - want).max()}"


# ---- layers split over two servers (two devices; issue 19's bars need two GPUs, this is their CPU stand-in) ------

# the tiny model's slots: layers 0-1 (dense, n_dense 2), 2-3 (sparse) and the output
SPLITS = {
    "dense-only-first": dict(tensor_split=[2, 3]),               # first: layers 0-1 (dense only); second: 2-3, output
    "sparse-on-both": dict(tensor_split=[1, 1]),                 # first: layers 0-2; second: 3, output
    "partial": dict(tensor_split=[1, 1], n_gpu_layers=4),        # the CPU: layer 0; first: 1-2; second: 3, output
}


@pytest.mark.parametrize("split", list(SPLITS))
def test_layer_split_equals_local(servers, tiny_model, split):
    # ubatches of 32: the 100-token prompt is prefilled in four, its codes written by each on the device holding the
    # layer; then the sparse steps, a state saved and loaded into a new context on the same split, and four steps
    # more: all bitwise as the same run on the local CPU
    kw = dict(n_ubatch=32, n_batch=32)

    def run(llm):
        got, steps = trace(llm, prompt_tokens(PROMPT, llm.n_vocab()))
        assert llm.adamas_verify_codes() == 0
        return got, steps, llm.save_state()

    local = load(tiny_model, BUDGET, **kw)
    try:
        want, want_steps, state = run(local)
        want_more = _continue(local, state, want)
    finally:
        local.close()

    eps = [servers["a"].endpoint, servers["b"].endpoint]
    llm = load(tiny_model, BUDGET, rpc_servers=eps, **kw, **SPLITS[split])
    try:
        assert len(llm.rpc_devices) == 2
        # nothing falls back: both sparse layers sparse, no layer refused, no reason
        assert llm.adamas_unavailable_reason is None and llm.adamas_n_sparse_layers == 2
        assert not llm.adamas_refused_layers
        got, steps, state = run(llm)
    finally:
        llm.close()
    llm = load(tiny_model, BUDGET, rpc_servers=eps, **kw, **SPLITS[split])  # a new context, the servers' caches new
    try:
        got_more = _continue(llm, state, got)
    finally:
        llm.close()
    assert steps == want_steps == STEPS
    assert np.array_equal(got, want), f"max |diff| {np.abs(got - want).max()}"
    assert np.array_equal(got_more, want_more), f"after the reload: max |diff| {np.abs(got_more - want_more).max()}"
    assert servers["a"].alive() and servers["b"].alive()


class _GgmlTensor(ctypes.Structure):
    """The head of ggml.h's struct ggml_tensor (the pinned upstream's layout), for the eval callback below."""
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64*4), ("nb", ctypes.c_size_t*4),
                ("op", ctypes.c_int), ("op_params", ctypes.c_int32*16), ("flags", ctypes.c_int32),
                ("src", ctypes.c_void_p*10), ("view_src", ctypes.c_void_p), ("view_offs", ctypes.c_size_t),
                ("data", ctypes.c_void_p), ("name", ctypes.c_char*64)]


def _ggml_base():
    lib = ctypes.CDLL(str(Path(_lib.LIB_DIR) / "libggml-base.so"))
    lib.ggml_op_desc.restype = ctypes.c_char_p
    lib.ggml_op_desc.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_buffer_name.restype = ctypes.c_char_p
    lib.ggml_backend_buffer_name.argtypes = [ctypes.c_void_p]
    return lib


def _step_nodes(model: Path, eps: list[str], budget: int) -> list[tuple]:
    """The nodes of one decode step after a 100-token prompt, in the order the scheduler computed them, with the
    layers split 1:1 over two servers: (op, name, device of its result, [(name, device) of each source])."""
    g = _ggml_base()
    rec: list[tuple] = []
    on = [False]

    def dev(buf) -> str:
        return g.ggml_backend_buffer_name(buf).decode() if buf else "-"

    @adamas_gguf.llama_cpp.ggml_backend_sched_eval_callback
    def cb(t, ask, _user):
        if ask:
            return on[0]  # observe every node of the step
        x = _GgmlTensor.from_address(t)
        srcs = [_GgmlTensor.from_address(p) for p in x.src if p]
        rec.append((g.ggml_op_desc(t).decode(), x.name.decode(), dev(x.buffer),
                    [(y.name.decode(), dev(y.buffer)) for y in srcs]))
        return True

    llm = load(model, 0, rpc_servers=eps, tensor_split=[1, 1])
    c = Ctx(llm, False, budget=budget, cb_eval=cb)
    try:
        last = c.prompt(prompt_tokens(PROMPT, c.n_vocab))
        on[0] = True
        c.decode([(int(np.argmax(last)), PROMPT, 0)])
        assert c.sparse_steps == (1 if budget else 0)
    finally:
        c.close()
        llm.close()
    return rec


def _device_runs(rec: list[tuple]) -> list[str]:
    """The devices of the computed nodes, consecutive repeats merged: a split of the scheduler's graph per run."""
    runs: list[str] = []
    for op, _, d, _ in rec:
        if op not in ("VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE", "NONE") and (not runs or runs[-1] != d):
            runs.append(d)
    return runs


def test_layer_split_placement(servers, tiny_model):
    # issue 19's placement bars, with two servers standing in for two GPUs (layers 0-2 on the first, 3 and the
    # output on the second): each sparse layer's encode, select and attention run on the device that holds the
    # layer's K (their code and K sources read in place: no scheduler copy, whose names carry a '#'), and the sparse
    # step runs in as many device runs (the scheduler's splits) as the dense step
    eps = [servers["a"].endpoint, servers["b"].endpoint]
    dense = _step_nodes(tiny_model, eps, 0)
    sparse = _step_nodes(tiny_model, eps, BUDGET)
    ada = [r for r in sparse if r[0].startswith("ADAMAS_")]
    assert not [r for r in dense if r[0].startswith("ADAMAS_")]
    sel = [r for r in ada if r[0] == "ADAMAS_SELECT"]
    att = [r for r in ada if r[0] == "ADAMAS_ATTN"]
    assert len(sel) == 2 and len(att) == 2, [r[:3] for r in ada]  # layers 2 and 3
    # one sparse layer on each server (a buffer's name carries its server's endpoint)
    assert sorted(ep for ep in eps for r in sel if ep in r[2]) == sorted(eps), [r[:3] for r in sel]
    for op, name, d, srcs in ada:
        assert d.startswith("RPC"), (op, name, d)
        for sname, sd in srcs:
            # the scheduler's copies are named DEVICE#tensor#n: a graph input (cell indices, the mask) comes from the
            # host as for dense, but no cache tensor (K, V, the codes) may be copied
            assert not ("#" in sname and "cache_" in sname), f"{op} {name} on {d} reads a copy {sname}"
            assert sd == d, f"{op} {name} on {d} reads {sname} on {sd}"
    assert _device_runs(sparse) == _device_runs(dense), (_device_runs(dense), _device_runs(sparse))
    assert servers["a"].alive() and servers["b"].alive()


# ---- test-backend-ops through an rpc-server ------------------------------------------------------------------

BACKEND_OPS = Path(_build_info.BUILD_DIR) / "tests" / "cpp" / "test-backend-ops"


@pytest.fixture(scope="module")
def ops_servers(tmp_path_factory):
    """Servers no connection of this process holds (a server serves one client at a time): one of this build,
    and one whose device refuses ADAMAS_SELECT."""
    d = tmp_path_factory.mktemp("rpc-ops")
    s = {"good": Server(d), "refuse": Server(d, refuse="ADAMAS_SELECT")}
    yield s
    for srv in s.values():
        srv.stop()


def backend_ops(server: Server, op: str) -> tuple[list[str], str]:
    """test-backend-ops' cases of op on the server's device (RPC0), each compared with the local CPU: the lines
    of the cases, and the summary ("N/M tests passed")."""
    assert BACKEND_OPS.is_file(), f"{BACKEND_OPS}: build with -Ccmake.define.ADAMAS_BUILD_TESTS=ON (make test)"
    r = subprocess.run([str(BACKEND_OPS), "test", "--rpc", server.endpoint, "-b", "RPC0", "-o", op],
                       capture_output=True, text=True, timeout=300)
    out = re.sub(r"\x1b\[[0-9;]*m", "", r.stdout)
    assert r.returncode == 0, out[-3000:] + r.stderr[-2000:]
    cases = [ln.strip() for ln in out.splitlines() if ln.strip().startswith(op + "(")]
    summary = re.search(r"(\d+)/(\d+) tests passed", out)
    assert summary, out[-3000:]
    return cases, summary.group(0)


@pytest.mark.parametrize("op", ["ADAMAS_ENCODE", "ADAMAS_SELECT", "ADAMAS_ATTN"])
def test_backend_ops_through_rpc(ops_servers, op):
    # upstream's comparison tool (patch 0026 gives it --rpc): every Adamas case computed on the server's CPU, its
    # parameters and inputs sent over the wire, must equal the local CPU's (indices exactly)
    cases, summary = backend_ops(ops_servers["good"], op)
    assert len(cases) > 50, cases
    bad = [c for c in cases if not c.endswith(": OK")]
    assert not bad, bad[:5]
    assert summary == f"{len(cases)}/{len(cases)} tests passed"
    assert ops_servers["good"].alive()


def test_backend_ops_refused_op_not_run(ops_servers):
    # the device's answer comes over the wire: refused there, the tool runs none of the op's cases
    cases, summary = backend_ops(ops_servers["refuse"], "ADAMAS_SELECT")
    assert cases and all(": not supported [RPC0[" in c for c in cases), cases[:3]
    assert summary == "0/0 tests passed"
    encode, _ = backend_ops(ops_servers["refuse"], "ADAMAS_ENCODE")
    assert encode and all(c.endswith(": OK") for c in encode)


@needs_upstream
def test_backend_ops_upstream_server_runs_none(tmp_path):
    # upstream's server gets no Adamas node: its device is asked nothing, and every case is "not supported"
    s = Server(tmp_path, binary=UPSTREAM_RPC_SERVER)
    try:
        cases, summary = backend_ops(s, "ADAMAS_ATTN")
        assert s.alive()
    finally:
        s.stop()
    # (a case of two Adamas nodes names the device twice)
    assert cases and all(": not supported [RPC0[" in c for c in cases), cases[:3]
    assert summary == "0/0 tests passed"


# ---- bench-adamas-decode through an rpc-server -----------------------------------------------------------------

BENCH_DECODE = Path(_build_info.BUILD_DIR) / "tests" / "cpp" / "bench-adamas-decode"


def bench_rows(model: Path, *extra: str, timeout: float = 120) -> tuple[list, str]:
    """bench-adamas-decode at depth 256, dense and budget 64, 16 steps, one round: the cells of its table's rows
    (every t/s > 0), and its whole output."""
    assert BENCH_DECODE.is_file(), f"{BENCH_DECODE}: build with -Ccmake.define.ADAMAS_BUILD_TESTS=ON (make test)"
    r = subprocess.run([str(BENCH_DECODE), "-m", str(model), "-d", "256", "-b", f"0,{BUDGET}", "-n", "16", "-r", "1",
                        "-t", str(THREADS), *extra], capture_output=True, text=True, timeout=timeout)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    rows = [[c.strip() for c in ln.split("|")] for ln in r.stdout.splitlines() if ln.startswith(f"| {model.name}")]
    assert all(float(c[6]) > 0 for c in rows), rows
    return rows, out


def bench_decode(model: Path, *extra: str) -> tuple[dict, str]:
    """bench_rows of one model load: {budget: sparse steps}, and the whole output."""
    rows, out = bench_rows(model, *extra)
    assert len(rows) == 2, out[-3000:]
    return {int(c[4]): int(c[9]) for c in rows}, out


def test_bench_decode_through_rpc(ops_servers, tiny_model):
    # --rpc puts the model on the server's device (RPC0), the way test-backend-ops --rpc reaches it: the same
    # sparse steps as local (the GPU machine's `scripts/device.sh rpc` times it at 32K against CUDA0)
    local, out = bench_decode(tiny_model)
    assert "rpc-server" not in out
    ep = ops_servers["good"].endpoint
    remote, out = bench_decode(tiny_model, "--rpc", ep)
    assert f"model on the rpc-server devices {ep}: RPC0" in out, out
    assert "Adamas unavailable" not in out, out
    assert remote == local == {0: 0, BUDGET: 16}
    # a server whose device refuses an op: the bench decodes dense there, and says why
    refused, out = bench_decode(tiny_model, "--rpc", ops_servers["refuse"].endpoint)
    assert refused == {0: 0, BUDGET: 0} and "Adamas unavailable" in out and "ADAMAS_SELECT" in out, out
    assert ops_servers["good"].alive() and ops_servers["refuse"].alive()


def test_bench_decode_one_and_two_devices(servers, tiny_model):
    # -ng 1,2 (issue 19 item 6's one-against-two-GPUs run, two servers standing in): the model on the first device,
    # then split by layer over both, in one run; each block dense and budget 64, with the same sparse steps
    eps = f"{servers['a'].endpoint},{servers['b'].endpoint}"
    rows, out = bench_rows(tiny_model, "--rpc", eps, "-ng", "1,2", timeout=180)
    got = {(c[1], int(c[4])): int(c[9]) for c in rows}  # (model [N dev], budget): sparse steps
    assert set(got) == {(f"{tiny_model.name} [{n} dev]", b) for n in (1, 2) for b in (0, BUDGET)}, out[-3000:]
    assert got == {k: 16 if k[1] else 0 for k in got}, got
    assert "Adamas unavailable" not in out, out
    # more devices than there are
    r = subprocess.run([str(BENCH_DECODE), "-m", str(tiny_model), "--rpc", servers["a"].endpoint, "-ng", "2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "-ng 2: only 1 device(s) here" in r.stderr, r.stderr
    assert servers["a"].alive() and servers["b"].alive()


def test_bench_decode_rpc_empty_entry(tiny_model):
    r = subprocess.run([str(BENCH_DECODE), "-m", str(tiny_model), "--rpc", "127.0.0.1:1,"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "each server is HOST:PORT" in r.stderr, r.stderr


# ---- the command line -----------------------------------------------------------------------------------------


@pytest.fixture
def cli_server(tmp_path):
    """A server of its own: the test process holds no connection to it (a server serves one client at a time)."""
    s = Server(tmp_path)
    yield s
    s.stop()


def _run(model: Path, *extra: str):
    return run_cli("run", str(model), "-p", "The capital of France is", "-n", "8", "--temp", "0", "-c", "512",
                   "-t", str(THREADS), *extra)


def test_run_rpc_equals_local(cli_server, tiny_model):
    local = _run(tiny_model, "--budget", "8")
    remote = _run(tiny_model, "--budget", "8", "--rpc", cli_server.endpoint, "-sm", "layer", "-ts", "1")
    assert local.returncode == 0 and remote.returncode == 0, (local.stderr, remote.stderr)
    assert remote.stdout == local.stdout
    assert "Adamas off" not in remote.stderr
    sparse = re.search(r"adamas: (\d+) sparse decode steps", remote.stderr)
    assert sparse and int(sparse.group(1)) > 0, remote.stderr


def test_run_rpc_mismatch_one_note(tmp_path, tiny_model):
    s = Server(tmp_path, wire="7")
    try:
        local = _run(tiny_model)
        remote = _run(tiny_model, "--budget", "8", "--rpc", s.endpoint)
    finally:
        s.stop()
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout
    notes = [ln for ln in remote.stderr.splitlines() if "Adamas off" in ln]
    assert len(notes) == 1 and "wire version 7" in notes[0], remote.stderr


@needs_upstream
def test_run_upstream_server_one_note(tmp_path, tiny_model):
    s = Server(tmp_path, binary=UPSTREAM_RPC_SERVER)
    try:
        local = _run(tiny_model)
        remote = _run(tiny_model, "--budget", "8", "--rpc", s.endpoint)
    finally:
        alive = s.alive()
        s.stop()
    assert remote.returncode == 0 and alive, remote.stderr
    assert remote.stdout == local.stdout
    notes = [ln for ln in remote.stderr.splitlines() if "Adamas off" in ln]
    assert len(notes) == 1 and "has no Adamas kernels" in notes[0], remote.stderr


def test_run_split_mode_tensor_one_note(tmp_path, tiny_model):
    pair = [Server(tmp_path), Server(tmp_path)]
    try:
        flags = ("--rpc", ",".join(s.endpoint for s in pair), "-sm", "tensor")
        dense = _run(tiny_model, *flags)
        remote = _run(tiny_model, "--budget", "8", *flags)
    finally:
        for s in pair:
            s.stop()
    assert dense.returncode == 0 and remote.returncode == 0, (dense.stderr, remote.stderr)
    assert remote.stdout == dense.stdout
    notes = [ln for ln in remote.stderr.splitlines() if "Adamas off" in ln]
    assert len(notes) == 1 and SM_TENSOR_WORDS in notes[0], remote.stderr
    assert "adamas: 0 sparse decode steps" in remote.stderr


def test_serve_rpc(tmp_path, default_model):
    # `serve --rpc` on the default model past the budget: the completion is the library's, called locally, and
    # /extras/adamas reports the server's device and its layers sparse
    from test_serve import LONG_PROMPT, SAME, N_CTX as SERVE_CTX, Server as Serve
    srv = Server(tmp_path)
    try:
        serve = Serve("--budget", str(BUDGET), "--rpc", srv.endpoint, "-t", str(THREADS))
        try:
            st = serve.get("/extras/adamas")
            r = serve.client().completions.create(model="x", prompt=LONG_PROMPT, max_tokens=8, temperature=0,
                                                  extra_body=SAME)
            after = serve.get("/extras/adamas")
        finally:
            err = serve.stop()
    finally:
        srv.stop()
    assert "Traceback" not in err, err[-3000:]
    assert len(st["rpc_devices"]) == 1 and st["rpc_devices"][0].startswith("RPC"), st
    assert st["unavailable_reason"] is None and st["sparse_layers"] == 28, st  # SmolLM2: 30 layers, 2 dense
    assert after["sparse_steps"] - st["sparse_steps"] >= 7, (st, after)  # the steps after the first token
    text = r.choices[0].text
    llm = adamas_gguf.Llama(str(default_model), n_ctx=SERVE_CTX, n_threads=THREADS, n_threads_batch=THREADS,
                            budget=BUDGET, verbose=False)
    try:
        want = llm.create_completion(LONG_PROMPT, max_tokens=8, temperature=0, **SAME)["choices"][0]["text"]
    finally:
        llm.close()
    assert text == want and text.strip(), (text, want)


@pytest.mark.parametrize("args, code, words", [
    (["--rpc", "nohost"], 2, "--rpc: 'nohost' is not host:port"),
    (["--rpc", "127.0.0.1:1,127.0.0.1:1"], 2, "is given twice"),
    (["-ts", "1,x"], 2, "'x' is not a number"),
    (["-ts", "0,0"], 2, "at least one proportion must be > 0"),
    (["-sm", "rows"], 2, "invalid choice: 'rows'"),
    (["-mg", "99"], 2, "-mg/--main-gpu: 99 is out of range"),
    (["--rpc", "127.0.0.1:1", "-sm", "row"], 1, "-sm row: an rpc-server's device cannot hold rows"),
])
def test_run_bad_device_flags(tiny_model, args, code, words):
    r = _run(tiny_model, *args)
    assert r.returncode == code and words in r.stderr, (r.returncode, r.stderr)


def test_row_split_over_rpc_refused_before_loading(tiny_model):
    # llama.cpp refuses it at load time with a message llama_cpp.Llama turns into "Failed to load model from file";
    # the library says why before it connects to anything (no server listens on port 1)
    with pytest.raises(ValueError, match="split_mode row: an rpc-server's device cannot hold rows"):
        adamas_gguf.Llama(str(tiny_model), rpc_servers="127.0.0.1:1", split_mode=2, verbose=False)


def test_run_rpc_nothing_listening(tiny_model):
    port = free_port()
    r = _run(tiny_model, "--rpc", f"127.0.0.1:{port}")
    assert r.returncode == 1 and f"rpc-server 127.0.0.1:{port}: cannot connect" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
