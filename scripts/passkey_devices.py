#!/usr/bin/env python3
"""SmolLM2 passkey answers and perplexity on the CPU and on the GPU, dense and at Adamas budgets with the
library's default parameters (or --variant ones): the GPU kernels must give the answers the CPU gives
(issues 5, 15). The protocols are `python -m adamas_gguf eval`'s (adamas_gguf.evaluate): passkey, a dense
prefill of all but the prompt's last 400 characters, those fed token by token (sparse decode steps), then
greedy answer tokens; perplexity (--ppl-text), every token fed alone, its NLL from the step's logits.

    python scripts/passkey_devices.py [MODEL] [--budget 64 256] [--lengths 2048 4096 7600] [--depths 5]
        [--seed 42] [--variant rerank=4] [--ppl-text FILE --ppl-tokens 2048]

Exit status 1 if an answer at a budget differs between the devices, or a perplexity by more than 0.3%.
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
    a = ap.parse_args()
    model = a.model or str(default_model_path())
    configs = make_configs(AdamasParams(), a.budget, a.variant)

    res, ppl = {}, {}
    for dev, ngl in (("CPU", 0), ("GPU", 99)):
        llm = Llama(model, n_ctx=8192, n_batch=512, n_gpu_layers=ngl, verbose=False)
        for cfg in configs[1:]:
            llm.set_adamas(cfg.params)
            if llm.adamas_unavailable_reason:
                print(f"{dev} {cfg.label}: Adamas unavailable: {llm.adamas_unavailable_reason}", file=sys.stderr)
        llm.set_adamas(budget=0)
        runner = Runner(llm)
        res[dev] = run_passkey(runner, configs, a.lengths, a.depths, a.seed)["results"]
        if a.ppl_text:
            tokens = llm.tokenize(open(a.ppl_text, "rb").read())[:a.ppl_tokens]
            ppl[dev] = {r["config"]: r for r in run_ppl(runner, configs, tokens)["runs"]}
        del llm

    print("| length | depth | key | config | CPU answer | GPU answer | sparse steps CPU/GPU | same number |")
    print("|---:|---:|---:|---|---|---|---:|:---:|")
    bad = 0
    for c, g in zip(res["CPU"], res["GPU"]):
        same = first_integer(c["answer"]) == first_integer(g["answer"])
        bad += (not same) and c["budget"] > 0
        print(f"| {c['length']} | {c['depth']} | {c['key']} | {c['config']} | {c['answer'].strip()!r} | "
              f"{g['answer'].strip()!r} | {c['sparse_steps']}/{g['sparse_steps']} | {'yes' if same else 'NO'} |")
    for dev in res:
        for cfg in configs:
            rows = [r for r in res[dev] if r["config"] == cfg.label]
            print(f"{dev} {cfg.label}: found {sum(r['found'] for r in rows)}/{len(rows)}")
    print("answers at the budgets: the same number on both devices" if bad == 0 else f"{bad} answers at the budgets differ")
    if ppl:
        print(f"\n| config | ppl CPU | ppl GPU | GPU/CPU - 1 | sparse steps CPU/GPU |\n|---|---:|---:|---:|---:|")
        for cfg in configs:
            c, g = ppl["CPU"][cfg.label], ppl["GPU"][cfg.label]
            rel = g["ppl"]/c["ppl"] - 1
            bad += abs(rel) > 0.003
            print(f"| {cfg.label} | {c['ppl']:.4f} | {g['ppl']:.4f} | {100*rel:+.3f}% | {c['sparse_steps']}/{g['sparse_steps']} |")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
