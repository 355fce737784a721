#!/usr/bin/env python3
"""Decode speed, dense against Adamas budgets, in one run (issue 4's benchmark).

For each context length: prefill that many tokens once (dense), save the state, then for each budget load
the state and time greedy decode steps. Prints a markdown table with tokens/s and the ratio to dense.

    python scripts/bench_decode.py [MODEL] --ctx 2048 4096 7600 --budget 0 64 256 --steps 32
    python scripts/bench_decode.py --within 200 --budget 256   # context within the budget: dense vs budget,
                                                             # alternating rounds (the overhead is small)
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="GGUF file (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--ctx", type=int, nargs="+", default=[2048, 4096, 7600])
    ap.add_argument("--budget", type=int, nargs="+", default=[0, 64, 256])
    ap.add_argument("--steps", type=int, default=32, help="timed decode steps per budget")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds per budget (the median is shown)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--within", type=int, metavar="N",
                    help="only compare dense with the largest budget at a context of N tokens (<= that budget), "
                         "in 8 alternating rounds")
    a = ap.parse_args()

    from adamas_gguf import Llama
    from adamas_gguf.models import default_model_path

    model = a.model or str(default_model_path())
    n_ctx = max(a.ctx) + a.steps + 64
    llm = Llama(model, n_ctx=n_ctx, n_batch=512, n_threads=a.threads, verbose=False)
    # any text will do: decode speed does not depend on it
    text = Path(__file__).resolve().parents[1].joinpath("README.md").read_text() * 50
    all_toks = llm.tokenize(text.encode())

    budgets = [0] + [b for b in a.budget if b != 0]
    if a.within:
        within(llm, all_toks[:a.within], max(budgets), a.steps)
        return
    rows = []
    for n in a.ctx:
        toks = all_toks[:n]
        llm.set_adamas(budget=0)
        llm.reset()
        llm.eval(toks)
        state = llm.save_state()
        speeds = {}
        for b in budgets:
            llm.set_adamas(budget=b)
            runs = []
            for _ in range(a.rounds):
                llm.load_state(state)
                s0 = llm.adamas_sparse_steps
                llm.eval([llm.sample(temp=0)])  # codes are rebuilt after a load: keep that out of the timing
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    llm.eval([llm.sample(temp=0)])
                runs.append(a.steps / (time.perf_counter() - t0))
                sparse = llm.adamas_sparse_steps - s0
            speeds[b] = (statistics.median(runs), sparse)
            print(f"ctx {n:6d} budget {b:5d}: {speeds[b][0]:7.1f} tok/s ({sparse} sparse steps)", flush=True)
        rows.append((n, speeds))

    print()
    print("| context | " + " | ".join("dense" if b == 0 else f"budget {b}" for b in budgets) + " |")
    print("|---:|" + "---:|" * len(budgets))
    for n, sp in rows:
        d = sp[0][0]
        cells = [f"{sp[0][0]:.1f} t/s"] + [f"{sp[b][0]:.1f} t/s ({sp[b][0] / d:.2f}x)" for b in budgets[1:]]
        print(f"| {n} | " + " | ".join(cells) + " |")


def within(llm, toks: list[int], budget: int, steps: int) -> None:
    if budget < len(toks) + steps:
        raise SystemExit(f"--within: the budget {budget} must cover the context ({len(toks)} + {steps} steps)")
    llm.reset()
    llm.eval(toks)
    state = llm.save_state()
    runs: dict[int, list[float]] = {0: [], budget: []}
    for _ in range(8):
        for b in runs:
            llm.set_adamas(budget=b)
            llm.load_state(state)
            llm.eval([llm.sample(temp=0)])
            t0 = time.perf_counter()
            for _ in range(steps):
                llm.eval([llm.sample(temp=0)])
            runs[b].append(steps / (time.perf_counter() - t0))
    d, s = statistics.median(runs[0]), statistics.median(runs[budget])
    print(f"context {len(toks)}: dense {d:.1f} t/s, budget {budget} {s:.1f} t/s ({s / d:.3f}x, "
          f"{llm.adamas_sparse_steps} sparse steps)")


if __name__ == "__main__":
    main()
