#!/usr/bin/env python3
"""SmolLM2 passkey answers and perplexity on the CPU and on the GPU, dense and at Adamas budgets with the
library's default parameters (or --variant ones): the GPU kernels must give the answers the CPU gives
(issues 5, 15). The protocols are `python -m adamas_gguf eval`'s (adamas_gguf.evaluate): passkey, a dense
prefill of all but the prompt's last 400 characters, those fed token by token (sparse decode steps), then
greedy answer tokens; perplexity (--ppl-text), every token fed alone, its NLL from the step's logits.

    python scripts/passkey_devices.py [MODEL] [--budget 64 256] [--lengths 2048 4096 7600] [--depths 5]
        [--seed 42] [--variant rerank=4] [--ppl-text FILE --ppl-tokens 2048] [--cpu-threads 8 16]

Exit status 1 if an answer at a budget differs between the devices, or a perplexity by more than 0.3% (against
the CPU's first thread count). --cpu-threads runs the CPU side once per thread count (perplexity at the first
only): upstream's CPU flash attention splits a decode step's cells over the threads and rounds each share's sum
in F16 (docs/accuracy.md §10), so the CPU's own answer can change with its thread count; a differing trial is
then marked a knife edge of the CPU's (its answers differ between its thread counts) or not.
"""
from __future__ import annotations

import argparse
import sys

from adamas_gguf import AdamasParams, Llama
from adamas_gguf.evaluate import Runner, first_integer, make_configs, run_passkey, run_ppl
from adamas_gguf.models import default_model_path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?")
    ap.add_argument("--budget", type=int, nargs="+", default=[64])
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--ppl-text")
    ap.add_argument("--ppl-tokens", type=int, default=2048)
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 7600])
    ap.add_argument("--depths", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--cpu-threads", type=int, nargs="+", default=[0], help="CPU thread counts (0: the default)")
    a = ap.parse_args()
    model = a.model or str(default_model_path())
    configs = make_configs(AdamasParams(), a.budget, a.variant)

    res, ppl = {}, {}
    cpus = [f"CPU t={t}" if t else "CPU" for t in a.cpu_threads]
    runs = [(dev, 0, t) for dev, t in zip(cpus, a.cpu_threads)] + [("GPU", 99, 0)]
    for dev, ngl, t in runs:
        threads = {"n_threads": t, "n_threads_batch": t} if t else {}
        llm = Llama(model, n_ctx=8192, n_batch=512, n_gpu_layers=ngl, verbose=False, **threads)
        for cfg in configs[1:]:
            llm.set_adamas(cfg.params)
            if llm.adamas_unavailable_reason:
                print(f"{dev} {cfg.label}: Adamas unavailable: {llm.adamas_unavailable_reason}", file=sys.stderr)
        llm.set_adamas(budget=0)
        runner = Runner(llm)
        res[dev] = run_passkey(runner, configs, a.lengths, a.depths, a.seed)["results"]
        if a.ppl_text and dev in (cpus[0], "GPU"):
            tokens = llm.tokenize(open(a.ppl_text, "rb").read())[:a.ppl_tokens]
            ppl[dev] = {r["config"]: r for r in run_ppl(runner, configs, tokens)["runs"]}
        del llm

    print(f"| length | depth | key | config | {' | '.join(f'{d} answer' for d in cpus)} | GPU answer | "
          f"sparse steps CPU/GPU | same number |")
    print(f"|---:|---:|---:|---|{'---|'*len(cpus)}---|---:|:---:|")
    bad = edges = 0
    for rows in zip(*(res[d] for d in cpus), res["GPU"]):
        c, g = rows[0], rows[-1]
        same = first_integer(c["answer"]) == first_integer(g["answer"])
        edge = len({first_integer(r["answer"]) for r in rows[:-1]}) > 1 # the CPU disagrees with itself
        bad += (not same) and c["budget"] > 0
        edges += (not same) and c["budget"] > 0 and edge
        answers = " | ".join(repr(r["answer"].strip()) for r in rows[:-1])
        mark = "yes" if same else "NO (the CPU's knife edge)" if edge else "NO"
        print(f"| {c['length']} | {c['depth']} | {c['key']} | {c['config']} | {answers} | "
              f"{g['answer'].strip()!r} | {c['sparse_steps']}/{g['sparse_steps']} | {mark} |")
    for dev in res:
        for cfg in configs:
            rows = [r for r in res[dev] if r["config"] == cfg.label]
            print(f"{dev} {cfg.label}: found {sum(r['found'] for r in rows)}/{len(rows)}")
    print("answers at the budgets: the same number on both devices" if bad == 0 else
          f"{bad} answers at the budgets differ from the {cpus[0]}'s, {edges} of them where the CPU's own answers "
          f"differ between its thread counts")
    if ppl:
        print(f"\n| config | ppl {cpus[0]} | ppl GPU | GPU/CPU - 1 | sparse steps CPU/GPU |\n|---|---:|---:|---:|---:|")
        for cfg in configs:
            c, g = ppl[cpus[0]][cfg.label], ppl["GPU"][cfg.label]
            rel = g["ppl"]/c["ppl"] - 1
            bad += abs(rel) > 0.003
            print(f"| {cfg.label} | {c['ppl']:.4f} | {g['ppl']:.4f} | {100*rel:+.3f}% | {c['sparse_steps']}/{g['sparse_steps']} |")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
