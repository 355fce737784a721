#!/usr/bin/env python3
"""SmolLM2 passkey answers on the CPU and on the GPU, dense and at an Adamas budget: the GPU kernels must give
the answers the CPU gives (issue 5). The paper's protocol (adamas_gguf.evaluate): prefill all but the last
TAIL tokens, feed those one at a time (sparse decode steps), then greedy tokens.

    python scripts/passkey_devices.py [MODEL] [--budget 64] [--lengths 2048 4096 7600] [--depths 0.1 0.5 0.9]

Exit status 1 if an answer at the budget differs between the devices.
"""
from __future__ import annotations

import argparse
import random
import sys

from adamas_gguf import Llama
from adamas_gguf.evaluate import passkey_tokens
from adamas_gguf.models import default_model_path

TAIL, ANSWER = 30, 8


def answers(model: str, ngl: int, budget: int, lengths, depths) -> dict:
    llm = Llama(model, n_ctx=8192, n_batch=512, n_gpu_layers=ngl, verbose=False)
    out = {}
    for n in lengths:
        for depth in depths:
            key = random.Random(n * 1000 + int(depth * 100)).randint(10000, 99999)
            toks = passkey_tokens(lambda s: llm.tokenize(s.encode()), n, depth, key)
            for b in (0, budget):
                llm.set_adamas(budget=0)
                llm.reset()
                llm.eval(toks[:-TAIL])
                llm.set_adamas(budget=b)
                s0 = llm.adamas_sparse_steps
                for t in toks[-TAIL:]:
                    llm.eval([t])
                gen = []
                for _ in range(ANSWER):
                    t = llm.sample(temp=0)
                    gen.append(t)
                    llm.eval([t])
                text = llm.detokenize(gen).decode(errors="replace")
                out[(n, depth, b)] = (key, text.strip(), llm.adamas_sparse_steps - s0)
    reason = llm.adamas_unavailable_reason
    if reason:
        print(f"n_gpu_layers={ngl}: Adamas unavailable: {reason}", file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?")
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 7600])
    ap.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    a = ap.parse_args()
    model = a.model or str(default_model_path())
    cpu = answers(model, 0, a.budget, a.lengths, a.depths)
    gpu = answers(model, 99, a.budget, a.lengths, a.depths)
    print(f"| length | depth | key | budget | CPU answer | GPU answer | sparse steps CPU/GPU | same |")
    print("|---:|---:|---:|---:|---|---|---:|:---:|")
    bad = 0
    for k in cpu:
        key, tc, sc = cpu[k]
        _, tg, sg = gpu[k]
        same = tc == tg
        bad += (not same) and k[2] > 0
        print(f"| {k[0]} | {k[1]} | {key} | {k[2]} | {tc!r} | {tg!r} | {sc}/{sg} | {'yes' if same else 'NO'} |")
    found = lambda d, b: sum(str(v[0]) in v[1] for k, v in d.items() if k[2] == b)
    n = len(cpu) // 2
    print(f"found: CPU dense {found(cpu, 0)}/{n}, CPU budget {a.budget} {found(cpu, a.budget)}/{n}, "
          f"GPU dense {found(gpu, 0)}/{n}, GPU budget {a.budget} {found(gpu, a.budget)}/{n}")
    print("budget answers identical on both devices" if bad == 0 else f"{bad} budget answers differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
