"""Adamas on the real default model (SmolLM2-135M-Instruct), against dense decoding in the same process.

- passkey retrieval (the paper's protocol, ~4K tokens): the prompt is prefilled except its tail, which is
  fed token by token through the sparse decode path; at budget 64 the number comes back at every depth
  where dense finds it, and the sparse path really ran;
- a budget at or above the context gives exactly the dense tokens;
- after a state save and load (llama-cpp-python's prompt cache path) the continuation is the same tokens.
"""
from __future__ import annotations

import random

import pytest

from adamas_gguf import Llama
from adamas_gguf.evaluate import FILLER, passkey_tokens

TAIL = 30        # prompt tokens fed one at a time (sparse decode steps)
ANSWER = 8       # greedy tokens generated


@pytest.fixture(scope="module")
def big(default_model):
    return Llama(str(default_model), n_ctx=8192, n_batch=512, n_threads=2, verbose=False)


def answer(llm: Llama, state, tail: list[int]) -> str:
    llm.load_state(state)
    for t in tail:
        llm.eval([t])
    out = []
    for _ in range(ANSWER):
        t = llm.sample(temp=0)
        out.append(t)
        llm.eval([t])
    return llm.detokenize(out).decode(errors="replace")


@pytest.mark.parametrize("depth", [0.1, 0.5, 0.9])
def test_passkey_budget_64_matches_dense(big, depth):
    key = random.Random(int(depth * 100)).randint(10000, 50000)
    toks = passkey_tokens(lambda s: big.tokenize(s.encode()), 4096, depth, key)
    assert 4000 < len(toks) <= 4096, len(toks)
    big.set_adamas(budget=0)
    big.reset()
    big.eval(toks[:-TAIL])
    state = big.save_state()

    dense = answer(big, state, toks[-TAIL:])
    big.set_adamas(budget=64)
    steps0 = big.adamas_sparse_steps
    sparse = answer(big, state, toks[-TAIL:])
    steps = big.adamas_sparse_steps - steps0
    big.set_adamas(budget=0)

    assert steps == TAIL + ANSWER, f"{steps} sparse steps: the sparse path did not run every step"
    if str(key) in dense:
        assert str(key) in sparse, f"key {key} at depth {depth}: dense {dense!r}, budget 64 {sparse!r}"


def test_budget_at_least_context_is_dense(big):
    toks = big.tokenize(("Once upon a time, " * 40).encode())
    outs = []
    for budget in (0, 2048):
        big.set_adamas(budget=budget)
        steps0 = big.adamas_sparse_steps
        outs.append(_greedy(big, toks, 16))
        assert big.adamas_sparse_steps == steps0
    big.set_adamas(budget=0)
    assert outs[0] == outs[1]


def _greedy(llm: Llama, toks: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(toks)
    return _continue(llm, n)


def test_state_reload_continues_the_same(big):
    toks = big.tokenize(((FILLER + " ") * 40).encode())
    big.set_adamas(budget=32)
    big.reset()
    big.eval(toks[:-1])
    state = big.save_state()  # the codes are not in the state: a load re-encodes them from K
    big.eval(toks[-1:])
    first = _continue(big, 12)
    big.load_state(state)
    big.eval(toks[-1:])
    again = _continue(big, 12)
    big.set_adamas(budget=0)
    assert first == again


def _continue(llm: Llama, n: int) -> list[int]:
    out = []
    for _ in range(n):
        t = llm.sample(temp=0)
        out.append(t)
        llm.eval([t])
    return out
