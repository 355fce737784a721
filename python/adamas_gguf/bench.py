"""Decode speed against context length, dense and Adamas budgets (`python -m adamas_gguf bench`).

For each context length: a dense prefill of that many tokens, snapshotted; then `rounds` rounds, each
timing `steps` greedy decode steps of every setting in turn from the snapshot (interleaved, so that a slow
stretch of a noisy machine hits every setting alike); the median of the rounds is reported.
"""
from __future__ import annotations

import statistics
import time
from typing import Optional, Sequence

import numpy as np

from .evaluate import FILLER, Config, Progress, Runner


def bench_tokens(llm, n: int) -> list:
    """n tokens of text; any will do (decode speed does not depend on it): the passkey filler."""
    return llm.tokenize((FILLER + " ").encode() * (n // 8 + 16))[:n]


def run_bench(runner: Runner, configs: Sequence[Config], ctxs: Sequence[int], steps: int, rounds: int,
              progress: Optional[Progress] = None) -> list:
    rows = []
    for n in ctxs:
        toks = bench_tokens(runner.llm, n)
        runner.set(configs[0].params)
        runner.prefill(toks)
        runner.snapshot()
        times: dict = {c.label: [] for c in configs}
        sparse: dict = {}
        for rnd in range(rounds):
            for cfg in configs:
                runner.set(cfg.params)
                runner.restore()
                s0 = runner.sparse_steps
                # the first step after a restore re-encodes the key codes: keep it out of the timing
                t = int(np.argmax(runner.step(toks[-1])))
                t0 = time.perf_counter()
                for _ in range(steps):
                    t = int(np.argmax(runner.step(t)))
                times[cfg.label].append(steps / (time.perf_counter() - t0))
                sparse[cfg.label] = runner.sparse_steps - s0
            if progress:
                progress(f"context {n} round {rnd + 1}: " + ", ".join(
                    f"{c.label} {times[c.label][-1]:.1f}" for c in configs) + " t/s")
        rows.append({"ctx": n, "tps": {c.label: statistics.median(times[c.label]) for c in configs},
                     "rounds_tps": {c.label: times[c.label] for c in configs},
                     "sparse_steps_per_round": {c.label: sparse[c.label] for c in configs}})
    return rows
