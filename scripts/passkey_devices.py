#!/usr/bin/env python3
"""SmolLM2 passkey answers on the CPU and on the GPU, dense and at an Adamas budget with the library's
default parameters: the GPU kernels must give the answers the CPU gives (issue 5). The protocol is
`python -m adamas_gguf eval passkey`'s (adamas_gguf.evaluate.run_passkey): a dense prefill of all but the
prompt's last 400 characters, those fed token by token (sparse decode steps), then greedy answer tokens.

    python scripts/passkey_devices.py [MODEL] [--budget 64] [--lengths 2048 4096 7600] [--depths 5] [--seed 42]

Exit status 1 if an answer at the budget differs between the devices.
"""
from __future__ import annotations

import argparse
import sys

from adamas_gguf import AdamasParams, Llama
from adamas_gguf.evaluate import Runner, first_integer, make_configs, run_passkey
from adamas_gguf.models import default_model_path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?")
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 7600])
    ap.add_argument("--depths", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    model = a.model or str(default_model_path())
    configs = make_configs(AdamasParams(), [a.budget], [])

    res = {}
    for dev, ngl in (("CPU", 0), ("GPU", 99)):
        llm = Llama(model, n_ctx=8192, n_batch=512, n_gpu_layers=ngl, verbose=False)
        if llm.adamas_unavailable_reason:
            print(f"{dev}: Adamas unavailable: {llm.adamas_unavailable_reason}", file=sys.stderr)
        res[dev] = run_passkey(Runner(llm), configs, a.lengths, a.depths, a.seed)["results"]
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
    print("answers at the budget: the same number on both devices" if bad == 0 else f"{bad} answers at the budget differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
