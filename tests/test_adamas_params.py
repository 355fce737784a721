"""The Adamas parameters from Python: AdamasParams, Llama(..., budget=...), set_adamas, the `run` flags.

Bad values are refused before anything is loaded, with a message naming the parameter: a ValueError from
the library (the parameter's error wins over the model file's: a bad call is a bad call whatever the
file), a one-line usage error with exit code 2 from the command line.
"""
from __future__ import annotations

import ctypes
import inspect
import itertools
import math
import pickle
import re
from pathlib import Path

import pytest

import adamas_gguf
import llama_cpp
from adamas_gguf import AdamasParams, Llama, _lib
from adamas_gguf import cli as cli_mod
from adamas_gguf.cli import base as cli_base
from adamas_gguf import llama as llama_mod
from adamas_gguf.adamas import RECENT_AUTO
from adamas_gguf.gguf_check import GGUFError

from conftest import REPO, run_cli
from test_cli import assert_ok, assert_one_line_error, without_timings

HEADER = REPO / "cpp" / "include" / "llama-adamas.h"
C_TYPES = {"int32_t": ctypes.c_int32, "float": ctypes.c_float}
TINY_LAYERS = 4  # every tiny shape used here (models/tiny.py)
PROMPT = "abcdefghij" * 8  # about 80 tokens with the tiny models' one-character vocabulary


def _raw(p: _lib.llama_adamas_params) -> dict:
    return {name: getattr(p, name) for name, _ in p._fields_}


# ------------------------------------------------------------------------------------------------
# the binding: the ctypes struct and enums are the header's


@pytest.mark.parametrize("header", [HEADER, Path(adamas_gguf.__file__).parent / "include" / "llama-adamas.h"],
                         ids=["source", "installed"])
def test_struct_mirrors_header(header):
    text = header.read_text()
    body = re.search(r"struct llama_adamas_params\s*\{(.*?)\};", text, re.S).group(1)
    fields = re.findall(r"^\s*(\w+)\s+(\w+)\s*;", body, re.M)
    assert fields, body
    assert [(n, C_TYPES[t]) for t, n in fields] == list(_lib.llama_adamas_params._fields_)
    assert ctypes.sizeof(_lib.llama_adamas_params) == 4 * len(fields)
    for name, value in re.findall(r"\b(LLAMA_ADAMAS_(?:THR|SELECT)_\w+)\s*=\s*(\d+)", text):
        assert getattr(_lib, name) == int(value), name


def test_defaults_agree_with_library():
    c = _lib.llama_adamas_default_params()
    assert AdamasParams() == AdamasParams.c_defaults()
    assert _raw(AdamasParams().to_c()) == _raw(c)
    assert _lib.llama_adamas_params_check(c) is None
    # ...and the same defaults in Llama's signature and on the command line
    sig = inspect.signature(Llama.__init__).parameters
    for f in ("budget", "n_dense", "thr_mode", "thr_q", "thr_k", "select", "n_sink", "n_recent", "rerank"):
        assert sig[f].default == getattr(AdamasParams(), f), f
    args = cli_mod.build_parser().parse_args(["run"])
    assert cli_base.adamas_params(args, cli_mod.build_parser()) == AdamasParams()


def test_c_round_trip():
    p = AdamasParams(budget=96, n_dense=1, thr_mode="fixed", thr_q=10, thr_k=0.3, select="head", n_sink=4,
                     n_recent=32, rerank=1)
    raw = _raw(p.to_c())
    assert raw == dict(budget=96, n_dense=1, thr_mode=_lib.LLAMA_ADAMAS_THR_FIXED, thr_q=10.0,
                       thr_k=ctypes.c_float(0.3).value, select_mode=_lib.LLAMA_ADAMAS_SELECT_HEAD, n_sink=4,
                       n_recent=32, rerank=1)
    assert AdamasParams.from_c(p.to_c()) == p
    assert p.thr_k == ctypes.c_float(0.3).value  # stored as the library's float: reads back equal
    assert str(p) == ("budget=96 n_dense=1 thr_mode=fixed thr_q=10 thr_k=0.3 select=head n_sink=4 n_recent=32 "
                      "rerank=1")
    r = AdamasParams(budget=64, rerank=4)
    assert _raw(r.to_c())["rerank"] == 4 and AdamasParams.from_c(r.to_c()) == r
    e = AdamasParams(budget=64, select="exact", rerank=8)  # the reference takes any rerank (it uses none)
    assert _raw(e.to_c())["select_mode"] == _lib.LLAMA_ADAMAS_SELECT_EXACT == 2
    assert AdamasParams.from_c(e.to_c()) == e
    assert AdamasParams(budget=64, select="exact", n_sink=4, n_recent=8).n_sink == 4  # forced cells kept first


# ------------------------------------------------------------------------------------------------
# validation

BAD = [  # (keywords, exception, the message, a regex)
    (dict(budget=-1), ValueError, r"^budget must be >= 0 \(0 = dense\), got -1$"),
    (dict(budget=2**31), ValueError, r"budget must be at most 2147483647"),
    (dict(n_dense=-1), ValueError, r"^n_dense must be >= 0 .*got -1$"),
    (dict(thr_mode="median"), ValueError, r"^thr_mode must be one of 'rms', 'fixed', got 'median'$"),
    (dict(thr_mode="RMS"), ValueError, r"thr_mode must be one of 'rms', 'fixed'"),
    (dict(select="token"), ValueError, r"^select must be one of 'group', 'head', 'exact', got 'token'$"),
    (dict(thr_q=0), ValueError, r"^thr_q must be a finite number > 0, got 0\.0$"),
    (dict(thr_k=-0.5), ValueError, r"^thr_k must be a finite number > 0, got -0\.5$"),
    (dict(thr_q=math.nan), ValueError, r"thr_q must be a finite number > 0, got nan"),
    (dict(thr_k=math.inf), ValueError, r"thr_k must be a finite number > 0, got inf"),
    (dict(thr_q=1e39), ValueError, r"thr_q must be at most 3\.40282e\+38 \(a C float\)"),
    (dict(thr_k=1e-50), ValueError, r"thr_k must be a C float > 0, .*rounds to 0"),
    (dict(n_sink=-1), ValueError, r"^n_sink must be >= 0, got -1$"),
    (dict(n_recent=-4), ValueError, r"^n_recent must be >= -1 \(a count of tokens, or RECENT_AUTO = -1\), got -4$"),
    (dict(budget=16, n_sink=8, n_recent=9), ValueError,
     r"n_sink \+ n_recent \(8 \+ 9 = 17\) must not exceed budget \(16\)"),
    (dict(rerank=0), ValueError, r"^rerank must be >= 1 \(1 = off\), got 0$"),
    (dict(budget=2**30, rerank=4), ValueError, r"rerank \* budget must fit in 32 bits"),
    (dict(budget=1.5), TypeError, r"budget must be an int, got 1\.5"),
    (dict(budget=True), TypeError, r"budget must be an int"),
    (dict(n_sink="4"), TypeError, r"n_sink must be an int"),
    (dict(thr_q="0.5"), TypeError, r"thr_q must be a number"),
]
BAD_IDS = [",".join(f"{k}={v!r}" for k, v in kw.items()) for kw, _, _ in BAD]


@pytest.mark.parametrize("kwargs,exc,pattern", BAD, ids=BAD_IDS)
def test_bad_params_rejected(kwargs, exc, pattern):
    with pytest.raises(exc) as e:
        AdamasParams(**kwargs)
    assert type(e.value) is exc and re.search(pattern, str(e.value)), str(e.value)
    with pytest.raises(exc):  # replace() validates as well
        AdamasParams().replace(**kwargs)


def test_good_params_accepted():
    import numpy as np
    assert AdamasParams(budget=np.int64(64), thr_q=np.float32(2.0)) == AdamasParams(budget=64, thr_q=2.0)
    assert AdamasParams(budget=16, n_sink=8, n_recent=8).n_recent == 8  # exactly the budget: allowed
    assert AdamasParams(budget=0, n_sink=8, n_recent=8).dense  # no budget to fit in when dense


def test_recent_auto_is_the_default_and_fits_any_budget():
    """RECENT_AUTO (-1, the default): min(16, budget/4, budget - n_sink) recent tokens, so that every budget is
    valid with the defaults; an explicit count keeps its meaning and its check against the budget."""
    assert AdamasParams().n_recent == RECENT_AUTO == AdamasParams.c_defaults().n_recent == -1
    for budget, n_sink, want in ((0, 0, 0), (1, 0, 0), (3, 0, 0), (8, 0, 2), (8, 7, 1), (8, 8, 0), (32, 0, 8),
                                 (64, 0, 16), (64, 60, 4), (1024, 0, 16)):
        assert AdamasParams(budget=budget, n_sink=n_sink).recent == want, (budget, n_sink)
    assert AdamasParams(budget=8, n_recent=3).recent == 3
    with pytest.raises(ValueError, match=r"n_sink \+ n_recent \(0 \+ 9 = 9\) must not exceed budget \(8\)"):
        AdamasParams(budget=8, n_recent=9)
    assert str(AdamasParams(budget=64)).split()[7] == "n_recent=auto"
    assert AdamasParams(n_dense=1000).n_dense == 1000  # more than the model has: simply no sparse layer


def test_python_is_at_least_as_strict_as_the_library():
    """Whatever AdamasParams accepts, llama_adamas_params_check accepts (so llama_adamas_set cannot fail);
    and the library itself refuses what is plainly wrong, so the final guard guards something."""
    ints = (-1, 0, 1, 4, 64)
    for budget, n_dense, n_sink, n_recent, thr, mode, sel in itertools.product(
            ints, (-1, 0, 2), ints, ints, (-1.0, 0.0, 1e-3, 0.5, 10.0), (0, 1, 2), (0, 1, 2)):
        raw = _lib.llama_adamas_params(budget, n_dense, mode, thr, 0.5, sel, n_sink, n_recent, 1)
        try:
            p = AdamasParams.from_c(raw)
        except ValueError:
            continue
        assert _lib.llama_adamas_params_check(p.to_c()) is None, p
    for bad in (dict(budget=-1), dict(n_dense=-1), dict(thr_q=0.0), dict(thr_k=-1.0), dict(thr_mode=7),
                dict(select_mode=7), dict(n_sink=-1), dict(n_recent=-2), dict(rerank=0),
                dict(rerank=2, n_sink=5, n_recent=4, budget=8)):
        raw = AdamasParams().to_c()
        for k, v in bad.items():
            setattr(raw, k, v)
        msg = _lib.llama_adamas_params_check(raw)
        assert isinstance(msg, str) and msg, bad


# ------------------------------------------------------------------------------------------------
# Llama(...): parameters checked before anything is loaded


@pytest.fixture
def no_loading(monkeypatch):
    """Make any attempt to read the model file or load the model fail the test."""
    def boom(*a, **k):
        raise AssertionError("the model was read or loaded before the parameters were checked")
    monkeypatch.setattr(llama_mod, "check_gguf", boom)
    monkeypatch.setattr(llama_cpp.Llama, "__init__", boom)


@pytest.mark.parametrize("kwargs,exc,pattern", BAD, ids=BAD_IDS)
def test_llama_rejects_bad_params_before_loading(no_loading, tiny_model, tmp_path, kwargs, exc, pattern):
    for path in (tiny_model, tmp_path / "missing.gguf"):  # a missing file: the parameter's error wins
        with pytest.raises(exc) as e:
            Llama(str(path), verbose=False, **kwargs)
        assert not isinstance(e.value, GGUFError) and re.search(pattern, str(e.value)), str(e.value)


def test_llama_rejects_other_mistakes_before_loading(no_loading, tiny_model):
    with pytest.raises(ValueError, match=r"budget=64\) needs flash attention"):
        Llama(str(tiny_model), budget=64, flash_attn=False)
    with pytest.raises(ValueError, match=r"either as adamas=AdamasParams\(\.\.\.\) or as keywords, not both "
                                         r"\(got adamas= and budget=, n_sink=\)"):
        Llama(str(tiny_model), adamas=AdamasParams(budget=8), budget=16, n_sink=2)
    with pytest.raises(TypeError, match="adamas must be an AdamasParams"):
        Llama(str(tiny_model), adamas={"budget": 8})


def test_missing_file_still_gguf_error_with_good_params(tmp_path):
    with pytest.raises(GGUFError, match="no such file"):
        Llama(str(tmp_path / "missing.gguf"), budget=64, verbose=False)


# ------------------------------------------------------------------------------------------------
# a live Llama


@pytest.fixture
def tiny_llm(tiny_model):
    m = Llama(str(tiny_model), n_ctx=256, seed=1, verbose=False)
    yield m
    m.close()


def test_new_llama_has_the_default_params(tiny_llm):
    assert tiny_llm.adamas == AdamasParams()
    assert tiny_llm.adamas_n_sparse_layers == 0  # budget 0: dense
    assert tiny_llm.adamas_sparse_steps == 0
    assert tiny_llm.adamas_unavailable_reason is None


def test_constructor_params_reach_the_context(tiny_model):
    want = AdamasParams(budget=64, n_dense=1, thr_mode="fixed", thr_q=10, thr_k=10, select="group", n_sink=4,
                        n_recent=16)
    for kw in (dict(adamas=want), {f: getattr(want, f) for f in llama_mod.ADAMAS_KEYWORDS}):
        m = Llama(str(tiny_model), n_ctx=128, verbose=False, **kw)
        try:
            assert m.adamas == want
            assert _raw(_lib.llama_adamas_get(m.ctx)) == _raw(want.to_c())
            assert m.adamas_n_sparse_layers == TINY_LAYERS - 1
        finally:
            m.close()


def test_set_adamas_round_trips(tiny_llm):
    p = tiny_llm.set_adamas(budget=48, n_dense=1, thr_mode="fixed", thr_q=10.0, thr_k=0.3, select="group",
                            n_sink=4, n_recent=8)
    assert p == tiny_llm.adamas == AdamasParams(budget=48, n_dense=1, thr_mode="fixed", thr_q=10.0, thr_k=0.3,
                                                select="group", n_sink=4, n_recent=8)
    assert _raw(_lib.llama_adamas_get(tiny_llm.ctx)) == _raw(p.to_c())
    assert tiny_llm.adamas_n_sparse_layers == TINY_LAYERS - 1
    # keywords change only the fields named
    assert tiny_llm.set_adamas(budget=64) == p.replace(budget=64)
    # an AdamasParams replaces them all
    assert tiny_llm.set_adamas(AdamasParams(budget=16)) == AdamasParams(budget=16)
    assert tiny_llm.adamas_n_sparse_layers == TINY_LAYERS - 2
    assert tiny_llm.set_adamas(n_dense=TINY_LAYERS).budget == 16 and tiny_llm.adamas_n_sparse_layers == 0
    assert tiny_llm.set_adamas(budget=0) == AdamasParams(n_dense=TINY_LAYERS)
    assert tiny_llm.adamas_n_sparse_layers == 0


def test_set_adamas_refuses_bad_values_and_changes_nothing(tiny_llm):
    before = tiny_llm.set_adamas(budget=32, n_sink=4, n_recent=12)
    for kwargs, exc, pattern in BAD:
        with pytest.raises(exc, match=pattern):
            tiny_llm.set_adamas(**kwargs)
        assert tiny_llm.adamas == before
    with pytest.raises(ValueError, match=r"n_sink \+ n_recent \(4 \+ 12 = 16\) must not exceed budget \(8\)"):
        tiny_llm.set_adamas(budget=8)  # checked against the fields kept, too
    with pytest.raises(TypeError, match="unexpected keyword argument 'sinks'"):
        tiny_llm.set_adamas(sinks=4)
    with pytest.raises(TypeError, match="set_adamas takes an AdamasParams"):
        tiny_llm.set_adamas({"budget": 4})
    assert tiny_llm.adamas == before


def test_set_adamas_needs_flash_attention(tiny_model):
    m = Llama(str(tiny_model), n_ctx=64, flash_attn=False, verbose=False)
    try:
        with pytest.raises(ValueError, match="needs flash attention"):
            m.set_adamas(budget=16)
        assert m.adamas == AdamasParams()
        assert m.set_adamas(thr_q=0.25).thr_q == 0.25  # dense changes are fine
    finally:
        m.close()


def _greedy(llm, prompt: str, n: int) -> list[int]:
    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    out: list[int] = []
    for t in llm.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0):
        out.append(t)
        if len(out) == n:
            break
    return out


def test_sparse_steps_are_counted(tiny_model):
    m = Llama(str(tiny_model), n_ctx=256, verbose=False, budget=16, n_sink=2, n_recent=4)
    try:
        assert m.adamas_unavailable_reason is None and m.adamas_n_sparse_layers == TINY_LAYERS - 2
        toks = _greedy(m, PROMPT, 8)  # context (~80 tokens) past the budget: every decode step sparse
        assert len(toks) == 8 and all(0 <= t < m.n_vocab() for t in toks)
        steps = m.adamas_sparse_steps
        assert steps >= 7, steps  # the first token comes from the prefill, dense
        m.set_adamas(budget=0)  # off: no more sparse steps
        m.reset()
        _greedy(m, PROMPT, 4)
        assert m.adamas_sparse_steps == steps
    finally:
        m.close()


def test_exact_selection(tiny_models):
    """select="exact" attends each head's true top budget by q.k: sparse steps, deterministic, not the code
    selection's tokens, and the same as a rerank whose pool holds every cell (the pool exact builds)."""
    import numpy as np

    def run(**kw):
        m = Llama(str(tiny_models / "gqa4-d64.gguf"), n_ctx=256, verbose=False, budget=8, **kw)
        try:
            logits = []
            toks = m.tokenize(PROMPT.encode(), add_bos=True, special=True)
            m.eval(toks[:-1])
            for t in toks[-1:] + toks[:16]:  # decode steps at 80+ tokens of context: sparse
                m.eval([t])
                logits.append(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(m.ctx, -1),
                                                    shape=(m.n_vocab(),)).copy())
            assert m.adamas_unavailable_reason is None and m.adamas_sparse_steps == 17
            return logits
        finally:
            m.close()

    exact = run(select="exact")
    assert all(np.array_equal(a, b) for a, b in zip(exact, run(select="exact", rerank=4)))  # rerank unused
    assert all(np.array_equal(a, b) for a, b in zip(exact, run(select="head", rerank=32)))  # 8 x 32 = the cache
    assert not all(np.array_equal(a, b) for a, b in zip(exact, run(select="head", rerank=1)))


def test_budget_covering_the_context_is_exact(tiny_model):
    """Steps whose context fits in the budget stay dense: the same tokens as budget 0, no sparse step."""
    dense = Llama(str(tiny_model), n_ctx=256, verbose=False)
    wide = Llama(str(tiny_model), n_ctx=256, verbose=False, budget=1024)
    try:
        assert _greedy(wide, PROMPT, 16) == _greedy(dense, PROMPT, 16)
        assert wide.adamas_sparse_steps == 0
    finally:
        dense.close()
        wide.close()


def test_unavailable_model_reports_why(tiny_models):
    m = Llama(str(tiny_models / "gqa2-d80.gguf"), n_ctx=128, verbose=False, budget=16)
    try:
        reason = m.adamas_unavailable_reason
        assert isinstance(reason, str) and reason, reason
        assert m.adamas_n_sparse_layers == 0
        assert m.adamas == AdamasParams(budget=16)  # kept as asked; decoding is dense
        assert len(_greedy(m, PROMPT, 4)) == 4 and m.adamas_sparse_steps == 0
    finally:
        m.close()


def test_closed_llama_refuses(tiny_model):
    m = Llama(str(tiny_model), n_ctx=64, verbose=False)
    m.close()
    for get in (lambda: m.adamas, lambda: m.set_adamas(budget=8), lambda: m.adamas_n_sparse_layers,
                lambda: m.adamas_sparse_steps, lambda: m.adamas_unavailable_reason):
        with pytest.raises(ValueError, match="this Llama is closed"):
            get()


def test_pickle_keeps_the_params(tiny_model):
    m = Llama(str(tiny_model), n_ctx=64, verbose=False, budget=24, n_recent=8)
    try:
        m2 = pickle.loads(pickle.dumps(m))
        try:
            assert isinstance(m2, Llama) and m2.adamas == m.adamas
        finally:
            m2.close()
    finally:
        m.close()


# ------------------------------------------------------------------------------------------------
# the command line


CLI_BAD = {  # flags: a regex the one-line message must match
    ("--budget", "-1"): r"argument --budget: -1 is out of range: must be between 0 and",
    ("--budget", "many"): r"argument --budget: invalid integer 'many'",
    ("--budget", "1e3"): r"argument --budget: invalid integer",
    ("--dense-layers", "-2"): r"argument --dense-layers: -2 is out of range",
    ("--thr-mode", "median"): r"argument --thr-mode: invalid choice: 'median' \(choose from 'rms', 'fixed'\)",
    ("--select", "token"): r"argument --select: invalid choice: 'token' \(choose from 'group', 'head', 'exact'\)",
    ("--thr-q", "0"): r"argument --thr-q: 0 is out of range: must be > 0",
    ("--thr-k", "-1"): r"argument --thr-k: -1 is out of range: must be > 0",
    ("--thr-q", "nan"): r"argument --thr-q: 'nan' is not a finite number",
    ("--thr-k", "inf"): r"argument --thr-k: 'inf' is not a finite number",
    ("--thr-q", "1e39"): r"argument --thr-q: 1e\+39 is out of range",
    ("--thr-k", "1e-50"): r"argument --thr-k: 1e-50 is too small",
    ("--thr-q", "x"): r"argument --thr-q: invalid number 'x'",
    ("--sink", "-1"): r"argument --sink: -1 is out of range",
    ("--recent", "-3"): r"argument --recent: -3 is out of range",
    ("--budget", "8", "--sink", "4", "--recent", "5"):
        r"--sink 4 and --recent 5 keep 9 tokens, more than --budget 8",
}


@pytest.mark.parametrize("flags", list(CLI_BAD), ids=[" ".join(f) for f in CLI_BAD])
def test_cli_bad_flags(tiny_model, tmp_path, flags):
    # a missing model file too: the usage error comes first (exit code 2, not 1 for the file)
    for model in (tiny_model, tmp_path / "missing.gguf"):
        msg = assert_one_line_error(run_cli("run", model, "-p", "hi", *flags), 2)
        assert re.search(CLI_BAD[flags], msg), msg


def test_cli_bad_flags_in_process(capsys):
    assert cli_mod.main(["run", "--budget", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adamas_gguf: error: argument --budget") and err.count("\n") == 1


def test_cli_help_lists_the_adamas_flags():
    flat = " ".join(assert_ok(run_cli("run", "--help")).split())
    for s in ("--budget N", "--dense-layers N", "--thr-mode {rms,fixed}", "--thr-q X", "--thr-k X",
              "--select {group,head,exact}", "--sink N", "--recent N|auto", "0 = dense attention", "(default: 2)",
              "(default: rms)", "(default: head)", "(default: 0.5)", "(default: 1.0)"):
        assert s in flat, s


def _cli_text(llm, tokens: list[int]) -> str:
    """The text the CLI prints for these tokens: up to the end of text, invalid UTF-8 as U+FFFD (a random
    model makes some; create_completion would drop them instead)."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    pieces = []
    for t in tokens:
        if llama_cpp.llama_vocab_is_eog(vocab, t):
            break
        pieces.append(cli_base.token_piece(llama_cpp, vocab, t))
    return b"".join(pieces).decode("utf-8", errors="replace")


def test_cli_budget_runs_and_matches_the_library(tiny_model):
    args = ("run", tiny_model, "-p", PROMPT, "-n", "12", "--temp", "0", "-c", "256")
    sparse = assert_ok(run_cli(*args, "--budget", "16", "--sink", "2", "--recent", "4"))
    m = Llama(str(tiny_model), n_ctx=256, verbose=False, budget=16, n_sink=2, n_recent=4)
    try:
        lib = _cli_text(m, _greedy(m, PROMPT, 12))
        assert m.adamas_sparse_steps > 0
    finally:
        m.close()
    assert sparse == lib + "\n"
    # a budget that covers the whole context: exactly the dense output
    assert assert_ok(run_cli(*args, "--budget", "4096")) == assert_ok(run_cli(*args))


def test_cli_verbose_reports_params_and_steps(tiny_model):
    r = run_cli("run", tiny_model, "-p", PROMPT, "-n", "8", "--temp", "0", "-c", "256", "--budget", "16",
                "--thr-mode", "fixed", "--thr-q", "10", "--thr-k", "10", "--select", "group", "-v")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    want = ("adamas_gguf: adamas: budget=16 n_dense=2 thr_mode=fixed thr_q=10 thr_k=10 select=group n_sink=0 "
            f"n_recent=auto rerank=4 (sparse layers: {TINY_LAYERS - 2})")
    assert want in lines, r.stderr[-2000:]
    steps = [ln for ln in lines if re.fullmatch(r"adamas_gguf: adamas: \d+ sparse decode steps", ln)]
    assert len(steps) == 1 and int(steps[0].split()[2]) > 0, steps
    r = run_cli("run", tiny_model, "-p", "hi", "-n", "2", "-v")
    assert r.returncode == 0 and "adamas_gguf: adamas: off (budget 0: dense attention)" in r.stderr
    assert "adamas_gguf: adamas: 0 sparse decode steps" in r.stderr.splitlines()


def test_cli_notes_a_model_adamas_cannot_serve(tiny_models):
    m = tiny_models / "gqa2-d80.gguf"
    r = run_cli("run", m, "-p", "hi", "-n", "4", "--budget", "16")
    assert r.returncode == 0 and r.stdout.endswith("\n"), r.stderr
    lines = without_timings(r.stderr).splitlines()
    assert len(lines) == 1, r.stderr
    assert re.fullmatch(r"adamas_gguf: note: Adamas off for this model: .+; decoding dense", lines[0]), lines
    assert_ok(run_cli("run", m, "-p", "hi", "-n", "4"))  # dense asked for: nothing to say
