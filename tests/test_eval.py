"""`eval passkey`, `eval ppl` and `bench`: the harness itself (prompts, token-by-token perplexity against an
independent computation, budgets covering the context giving dense exactly), the files they write, and
one-line errors. Real numbers on SmolLM2 at short contexts; file and error checks on the tiny models."""
from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest

from adamas_gguf import AdamasParams, Llama
from adamas_gguf import evaluate as ev

from conftest import REPO, run_cli
from test_cli import assert_one_line_error

TEXT = (REPO / "README.md").read_text()[:1500]  # any prose will do


# ------------------------------------------------------------------------------------------------
# the harness, on SmolLM2


@pytest.fixture(scope="module")
def smol(default_model):
    m = Llama(str(default_model), n_ctx=1100, n_batch=512, n_threads=2, verbose=False)
    yield m
    m.close()


def test_passkey_prompt_fits_and_holds_the_key(smol):
    tok = lambda s: smol.tokenize(s.encode())  # noqa: E731
    for length, depth in ((300, 0.0), (1024, 0.5), (1024, 1.0)):
        toks = ev.passkey_tokens(tok, length, depth, 31415)
        assert length - 40 < len(toks) <= length, (length, len(toks))
        text = smol.detokenize(toks).decode()
        assert text.count("The pass key is 31415.") == 1 and text.endswith(ev.PASSKEY_QUESTION)
    with pytest.raises(ev.EvalError, match="too short"):
        ev.passkey_tokens(tok, 30, 0.5, 1)


def test_passkey_dense_finds_the_key_and_budgets_run_sparse(smol):
    configs = ev.make_configs(AdamasParams(), [32, 2048], [])
    res = ev.run_passkey(ev.Runner(smol), configs, [1024], 2, seed=3)["results"]
    assert len(res) == 2 * len(configs)
    dense = [r for r in res if r["budget"] == 0]
    assert all(r["found"] for r in dense), dense  # SmolLM2 finds it at 1K
    assert all(r["n_tail"] > 50 and r["n_tokens"] <= 1024 for r in res)  # 400 characters fed one by one
    # budget 32 went through the sparse path at every fed token; 2048 covers the context: dense, same answer
    for r in res:
        if r["budget"] == 32:
            assert r["sparse_steps"] >= r["n_tail"], r
        if r["budget"] == 2048:
            d = next(x for x in dense if x["depth"] == r["depth"])
            assert r["sparse_steps"] == 0 and r["answer"] == d["answer"]
    rows = ev.passkey_summary(res, configs, [1024])
    assert [r["budget"] for r in rows] == [0, 32, 2048]
    assert rows[0]["found"] == 2 and rows[2]["equals_dense"]


def test_ruler_dense_answers_and_budgets_run_sparse(smol):
    # a budget covering the context is dense exactly (same answers); 32 takes the sparse path at every fed
    # token; the exact top-32 reference runs sparse too. SmolLM2 finds a single needle at 1K densely.
    configs = ev.make_configs(AdamasParams(), [32, 2048], ["select=head", "select=exact"])
    tasks = ["niah_single_1", "vt"]
    res = ev.run_ruler(ev.Runner(smol), configs, tasks, [1000], 1, seed=5)["results"]
    assert len(res) == len(tasks) * len(configs)
    dense = {r["task"]: r for r in res if r["budget"] == 0}
    assert dense["niah_single_1"]["score"] == 1.0, dense
    for r in res:
        assert r["n_tokens"] <= 1000 and r["n_tail"] > 30
        if r["budget"] == 32:
            assert r["sparse_steps"] >= r["n_tail"], r
        if r["budget"] == 2048:
            assert r["sparse_steps"] == 0 and r["answer"] == dense[r["task"]]["answer"], r
    rows = ev.ruler_summary(res, configs, tasks, [1000])
    assert [(r["budget"], r["select"]) for r in rows] == [(0, "head"), (32, "head"), (2048, "head"),
                                                          (32, "exact"), (2048, "exact")]
    for row in rows:
        scores = [r["score"] for r in res if r["config"] == row["config"]]
        assert row["average"] == pytest.approx(100 * sum(scores) / len(scores))  # one sample per task
    assert rows[2]["vs_dense"] == 0 and rows[1]["vs_exact"] == pytest.approx(rows[1]["average"] - rows[3]["average"])
    assert rows[0]["vs_dense"] is None and rows[3]["vs_exact"] is None


def _reference_nll(model_path, tokens, n_batch: int) -> np.ndarray:
    """NLL of tokens[1:] from llama-cpp-python's own evaluation with every position's logits (another
    context, its scores array, log-softmax over all rows at once): independent of the harness."""
    ref = Llama(str(model_path), n_ctx=len(tokens) + 8, n_batch=n_batch, n_threads=2, logits_all=True,
                verbose=False)
    try:
        ref.eval(tokens)
        x = np.asarray(ref.scores[:len(tokens) - 1], dtype=np.float64)
    finally:
        ref.close()
    m = x.max(axis=1, keepdims=True)
    logp = x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(tokens) - 1), tokens[1:]]


def test_ppl_token_by_token(smol, default_model):
    tokens = smol.tokenize(TEXT.encode())[:300]
    configs = ev.make_configs(AdamasParams(), [32, 400], [])
    runs = ev.run_ppl(ev.Runner(smol), configs, tokens)["runs"]
    dense, b32, b400 = runs
    assert dense["n_predicted"] == len(tokens) - 1 and dense["sparse_steps"] == 0
    # llama-cpp-python feeding one token per batch: the same decode steps, so the same numbers
    one = _reference_nll(default_model, tokens, n_batch=1)
    assert np.allclose(dense["nll"], one, rtol=0, atol=1e-4), np.abs(dense["nll"] - one).max()
    # one batch of all the tokens: other kernels (batched matmuls and attention), the same model; per token
    # the NLL moves by up to about 0.5 nats on this Q4_1 model, the perplexity by much less
    full = _reference_nll(default_model, tokens, n_batch=512)
    assert dense["ppl"] == pytest.approx(math.exp(full.mean()), rel=0.03)
    assert np.corrcoef(dense["nll"], full)[0, 1] > 0.99
    # a budget covering the whole text never goes sparse: exactly dense
    assert b400["sparse_steps"] == 0 and np.array_equal(b400["nll"], dense["nll"])
    # budget 32 is sparse from the 33rd token on, and it changes the predictions a little
    assert b32["sparse_steps"] == len(tokens) - 1 - 32
    assert np.array_equal(b32["nll"][:32], dense["nll"][:32]) and b32["ppl"] != dense["ppl"]
    assert abs(b32["ppl"] / dense["ppl"] - 1) < 0.5


def test_new_key_thresholds_recode_the_cache(default_model, smol):
    """set_adamas with other key thresholds on a live context: the stored codes are rebuilt, so it decodes as a
    context that had those thresholds from the start."""
    tokens = smol.tokenize(TEXT.encode())[:200]

    def decode(first: AdamasParams, then: AdamasParams) -> list:
        r = ev.Runner(smol)
        r.set(first)
        r.prefill(tokens)
        r.set(then)
        out = [int(np.argmax(r.step(tokens[-1])))]
        for _ in range(12):
            out.append(int(np.argmax(r.step(out[-1]))))
        return out

    rms = AdamasParams(budget=16, thr_mode="rms", thr_q=0.5, thr_k=0.5)
    fixed = AdamasParams(budget=16, thr_mode="fixed", thr_q=3.0, thr_k=3.0)
    assert decode(fixed, rms) == decode(rms, rms)
    assert decode(rms, fixed) == decode(fixed, fixed)


# ------------------------------------------------------------------------------------------------
# variants and budgets


def test_make_configs():
    cs = ev.make_configs(AdamasParams(), [16, 64, 64], ["thr-mode=rms,thr=0.5,select=head", "sink=4,recent=25%"])
    assert [c.label for c in cs] == ["dense", "thr-mode=rms,thr=0.5,select=head b16",
                                     "thr-mode=rms,thr=0.5,select=head b64", "sink=4,recent=25% b16",
                                     "sink=4,recent=25% b64"]
    assert cs[0].params.dense
    assert (cs[1].params.thr_mode, cs[1].params.thr_q, cs[1].params.thr_k, cs[1].params.select) == \
        ("rms", 0.5, 0.5, "head")
    assert (cs[3].params.n_sink, cs[3].params.n_recent, cs[4].params.n_recent) == (4, 4, 16)
    assert [c.label for c in ev.make_configs(AdamasParams(), [8], [])] == ["dense", "default b8"]
    ex = ev.make_configs(AdamasParams(), [64], ["select=exact"])[1]
    assert ex.label == "select=exact b64" and ex.params.select == "exact"
    for bad, msg in ((["thr=x"], "not a number"), (["size=3"], "unknown key"), (["sink"], "KEY=VALUE"),
                     (["recent=120%"], "share"), (["sink=10,recent=10"], "must not exceed budget"),
                     (["thr-mode=cubic"], "thr_mode")):
        with pytest.raises(ev.EvalError, match=msg):
            ev.make_configs(AdamasParams(), [16], bad)
    with pytest.raises(ev.EvalError, match=">= 1"):
        ev.make_configs(AdamasParams(), [0], [])


def test_passkey_trials_repeat_with_the_seed():
    a = ev.passkey_trials([100, 200], 4, seed=5)
    assert a == ev.passkey_trials([100, 200], 4, seed=5) != ev.passkey_trials([100, 200], 4, seed=6)
    assert [d for _, d, _ in a[:4]] == [0.125, 0.375, 0.625, 0.875]
    assert len({k for _, _, k in a}) == 4 and all(1 <= k <= 50000 for _, _, k in a)


# ------------------------------------------------------------------------------------------------
# the commands: files and errors (tiny random model: fast; its answers are noise)


def _files(prefix):
    return [prefix.with_name(prefix.name + ext) for ext in (".md", ".json", ".png")]


def test_eval_passkey_command_writes_its_files(tiny_model, tmp_path):
    out = tmp_path / "pk"
    r = run_cli("eval", "passkey", tiny_model, "--budget", "16", "32", "--lengths", "400", "600", "--depths", "2",
                "--tail-chars", "40", "--variant", "select=head", "--variant", "thr-mode=rms,thr=0.5",
                "-t", "1", "-o", out)
    assert r.returncode == 0, r.stderr
    md, js, png = _files(out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(js.read_text())
    assert [x["config"] for x in data["rows"]] == ["dense", "select=head b16", "select=head b32",
                                                   "thr-mode=rms,thr=0.5 b16", "thr-mode=rms,thr=0.5 b32"]
    assert len(data["results"]) == 2 * 2 * 5 and data["meta"]["lengths"] == [400, 600]
    assert data["meta"]["command"].startswith("python -m adamas_gguf eval passkey ")
    assert data["meta"]["command"].endswith(f" -o {out}")
    assert all(x["sparse_steps"] > 0 for x in data["results"] if x["budget"])
    assert md.read_text() in r.stdout and md.read_text().count("\n| ") == 6  # header + 5 rows
    assert "[20/20]" in r.stderr  # progress


def test_eval_ruler_command_writes_its_files(tiny_model, tmp_path):
    out = tmp_path / "ru"
    r = run_cli("eval", "ruler", tiny_model, "--budget", "16", "--lengths", "400", "600", "--tasks", "vt", "qa",
                "--variant", "select=head", "--variant", "select=exact", "-t", "1", "-o", out)
    assert r.returncode == 0, r.stderr
    md, js, png = _files(out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(js.read_text())
    assert [x["config"] for x in data["rows"]] == ["dense", "select=head b16", "select=exact b16"]
    assert len(data["results"]) == 2 * 2 * 3 and data["meta"]["tasks"] == ["vt", "qa"]
    assert all(x["sparse_steps"] > 0 for x in data["results"] if x["budget"])
    assert all(x["n_tokens"] <= x["length"] for x in data["results"])
    assert md.read_text() in r.stdout and "| vt |" in md.read_text() and "vs exact" in md.read_text()
    assert "[12/12]" in r.stderr


def test_named_model_unknown_is_a_path(tmp_path):
    line = assert_one_line_error(run_cli("run", "-m", "gemma9-1b", "-p", "x"), 1)
    assert "gemma9-1b" in line


def test_eval_ppl_command_writes_its_files(tiny_model, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    out = tmp_path / "ppl"
    r = run_cli("eval", "ppl", "-m", tiny_model, "--text", text, "--max-tokens", "200", "--budget", "16", "4096",
                "-q", "-t", "1", "-o", out)
    assert r.returncode == 0, r.stderr
    data = json.loads(_files(out)[1].read_text())
    runs = data["runs"]
    assert [x["budget"] for x in runs] == [0, 16, 4096] and data["meta"]["n_tokens"] == 200
    assert runs[2]["ppl"] == runs[0]["ppl"] and runs[1]["sparse_steps"] == 199 - 16
    # the per-token NLLs are kept apart, compressed; they give back each run's perplexity
    assert all("nll" not in x for x in runs)
    with gzip.open(out.with_name("ppl.nll.json.gz"), "rt") as f:
        per_token = json.load(f)
    assert per_token["config"] == [x["config"] for x in runs]
    assert [len(x) for x in per_token["nll"]] == [199] * 3
    for x, nll in zip(runs, per_token["nll"]):
        assert math.isclose(math.exp(sum(nll) / len(nll)), x["ppl"], rel_tol=1e-5)
    assert _files(out)[2].exists() and "[" not in r.stderr  # -q: no progress


def test_bench_command_writes_its_files(tiny_model, tmp_path):
    out = tmp_path / "b"
    r = run_cli("bench", tiny_model, "--ctx", "100", "300", "--budget", "16", "--steps", "4", "--rounds", "3",
                "-t", "1", "-o", out)
    assert r.returncode == 0, r.stderr
    rows = json.loads(_files(out)[1].read_text())["rows"]
    assert [x["ctx"] for x in rows] == [100, 300]
    for x in rows:
        assert set(x["tps"]) == {"dense", "default b16"} and all(len(v) == 3 for v in x["rounds_tps"].values())
        assert x["sparse_steps_per_round"] == {"dense": 0, "default b16": 5}
    assert _files(out)[2].exists() and "x) |" in r.stdout


def test_without_matplotlib_md_and_json_are_still_written(tiny_model, tmp_path):
    block = tmp_path / "block"
    (block / "matplotlib").mkdir(parents=True)
    (block / "matplotlib" / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    from conftest import cli_env
    env = cli_env(PYTHONPATH=str(block))
    out = tmp_path / "b"
    r = run_cli("bench", tiny_model, "--ctx", "50", "--budget", "16", "--steps", "2", "--rounds", "1", "-q",
                "-o", out, env=env)
    assert r.returncode == 0, r.stderr
    md, js, png = _files(out)
    assert md.exists() and js.exists() and not png.exists()
    assert "adamas_gguf: note: no plot: matplotlib is not installed" in r.stderr


def _bad_cases(tiny_model, tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 ".encode("latin-1") * 10)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    pk = ["eval", "passkey", tiny_model]
    return [
        # usage errors (2), before the model is loaded
        (pk + ["--budget", "0"], 2, "must be between 1 and"),
        (pk + ["--budget", "-3"], 2, "must be between 1 and"),
        (pk + ["--budget", "x"], 2, "invalid integer"),
        (pk, 2, "--budget"),
        (pk + ["--budget", "16", "--variant", "size=4"], 2, "unknown key"),
        (pk + ["--budget", "16", "--variant", "sink=10,recent=10"], 2, "must not exceed budget"),
        (pk + ["--budget", "16", "--depths", "0"], 2, "must be between 1 and 1000"),
        (["eval"], 2, "passkey, ppl or ruler"),
        (["eval", "ruler", tiny_model, "--budget", "16", "--tasks", "vt", "niah"], 2, "unknown task 'niah'"),
        (["eval", "ruler", tiny_model, "--budget", "16", "--lengths", "4000"], 1,
         "length 4000 plus 128 answer tokens is longer than the model's context (4096 tokens)"),
        (["eval", "ruler", tiny_model, "--budget", "16", "--tasks", "cwe", "--lengths", "100"], 1,
         "task cwe needs more than 100 tokens"),
        (["eval", "ruler", tmp_path / "nope.gguf", "--budget", "16"], 1, "no such file"),
        (["eval", "ppl", tiny_model, "--budget", "16"], 2, "--text"),
        (["bench", tiny_model, "--budget", "16", "--variant", "select=x"], 2, "select must be one of"),
        (["bench", tiny_model, "--budget", "16", "--ctx", "0"], 2, "must be at least 1"),
        # errors (1)
        (["eval", "passkey", tmp_path / "nope.gguf", "--budget", "16"], 1, "no such file"),
        (pk + ["--budget", "16", "--lengths", "5000"], 1, "longer than the model's context (4096 tokens)"),
        (pk + ["--budget", "16", "--lengths", "50"], 1, "length 50 is too short"),
        (["bench", tiny_model, "--budget", "16", "--ctx", "4090"], 1, "longer than the model's context"),
        (["eval", "ppl", tiny_model, "--budget", "16", "--text", tmp_path / "none.txt"], 1, "cannot read"),
        (["eval", "ppl", tiny_model, "--budget", "16", "--text", latin1], 1, "not UTF-8"),
        (["eval", "ppl", tiny_model, "--budget", "16", "--text", empty], 1, "at least 2"),
        (["bench", tiny_model, "--budget", "16", "--ctx", "20", "-o", tmp_path / "no" / "b"], 1, "no such folder"),
    ]


def test_bad_input_is_one_line(tiny_model, tmp_path):
    for args, code, msg in _bad_cases(tiny_model, tmp_path):
        r = run_cli(*args)
        line = assert_one_line_error(r, code)
        assert msg in line, (args, line)


def test_help_names_the_protocols():
    for cmd, words in ((["eval", "passkey"], ["--lengths", "--depths", "--seed", "--variant", "--tail-chars"]),
                       (["eval", "ppl"], ["--text", "--max-tokens", "--budget"]),
                       (["eval", "ruler"], ["--lengths", "--tasks", "--samples", "--seed", "niah_multikey_3", "cwe"]),
                       (["bench"], ["--ctx", "--steps", "--rounds", "--budget"])):
        r = run_cli(*cmd, "--help")
        assert r.returncode == 0
        for w in words:
            assert w in r.stdout, (cmd, w)
