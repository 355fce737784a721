#!/usr/bin/env python3
"""Adamas through an rpc-server on this machine's own device, against the same device used locally (issue 18
item 5; `scripts/device.sh rpc` starts the server and runs both parts).

  check --server HOST:PORT [--device cuda|cpu] [--model M ...]
      Each model (default: tiny random ones from models/tiny.py, or $ADAMAS_MODEL) decodes a random prompt past
      the budget and then --steps greedy steps, dense and with --budget, locally (cuda: n_gpu_layers=-1, every
      layer on the local GPU; cpu: n_gpu_layers=0) and through the server (rpc_servers=, every layer on its
      device: tensor_split 1 for RPC0, 0 for a local GPU). Every step's logits are compared bitwise with the
      first local run; a second local run shows whether the device itself is run-to-run deterministic (if it
      is not, RPC must stay within twice the local runs' own difference, or 1e-3 of the largest logit). The decode steps follow the first local
      run's greedy tokens in every run, so that differences stay numeric. Sparse steps must be > 0 with a
      budget (0 dense), Adamas on in both, verify_codes 0 (-1: it could not run there). A markdown table; exit
      code 1 if anything fails.
  bench --server HOST:PORT --bench BIN --model M [--depth 32768] [--budgets 0,64]
      bench-adamas-decode locally and with --rpc HOST:PORT (the model on the server's device), and the
      per-token cost of RPC: ms/token through the server minus local, per budget. Markdown on stdout (and --out).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# adamas_gguf first: it loads our libllama before llama_cpp is imported, and before numpy (on the GPU machine's
# torch virtualenv a model load crashed when numpy's wheel was loaded first: docs/perf-notes.md, RPC on the H200)
import adamas_gguf
from adamas_gguf import _build_info

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TINY = ("mha-d128", "gqa4-d64", "gqa8-d128")


def tiny_models(names, out: Path) -> list[Path]:
    spec = importlib.util.spec_from_file_location("adamas_tiny_models", REPO / "models" / "tiny.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return [mod.write_model(mod.SHAPES[n], out / f"{n}.gguf") for n in names]


def last_logits(llm) -> np.ndarray:
    ptr = adamas_gguf.llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def run(model: Path, budget: int, args, server: str | None, prompt: list[int] | None, path: list[int] | None):
    """One load: the prompt's last logits and each decode step's. The steps feed `path` (greedy of this run if
    None). Returns a dict of what the table shows."""
    kw = dict(n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=args.threads, seed=1, budget=budget,
              verbose=False)
    if server:
        # every layer on the server's device: RPC0 first in the model's device list, a local GPU after it gets 0
        kw.update(rpc_servers=server, n_gpu_layers=-1, tensor_split=[1.0, 0.0])
    else:
        kw.update(n_gpu_layers=-1 if args.device == "cuda" else 0)
    llm = adamas_gguf.Llama(str(model), **kw)
    try:
        if prompt is None:
            rng = np.random.default_rng(3)
            prompt = [int(t) for t in rng.integers(3, llm.n_vocab(), size=args.prompt)]
        s0 = llm.adamas_sparse_steps
        t0 = time.perf_counter()
        llm.eval(prompt)
        rows = [last_logits(llm)]
        taken = []
        for i in range(args.steps):
            tok = int(np.argmax(rows[-1])) if path is None else path[i]
            taken.append(tok)
            llm.eval([tok])
            rows.append(last_logits(llm))
        secs = time.perf_counter() - t0
        return dict(logits=np.stack(rows), prompt=prompt, path=taken, steps=llm.adamas_sparse_steps - s0,
                    verify=llm.adamas_verify_codes() if budget else None, reason=llm.adamas_unavailable_reason,
                    sparse_layers=llm.adamas_n_sparse_layers, devices=llm.rpc_devices, secs=secs)
    finally:
        llm.close()


def check(args) -> int:
    if args.device == "cuda" and not _build_info.CUDA:
        print("--device cuda: this adamas_gguf build has no CUDA backend", file=sys.stderr)
        return 2
    tmp = tempfile.TemporaryDirectory(prefix="rpc-check-")
    models = [Path(m) for m in args.model] if args.model else (
        [Path(os.environ["ADAMAS_MODEL"])] if os.environ.get("ADAMAS_MODEL") else tiny_models(TINY, Path(tmp.name)))
    budgets = [0, args.budget]
    print(f"local: {args.device} ({'n_gpu_layers=-1' if args.device == 'cuda' else 'n_gpu_layers=0'}); "
          f"server: {args.server}; prompt {args.prompt} random tokens, then {args.steps} decode steps; "
          f"adamas_gguf {_build_info.VERSION}, {_build_info.UPSTREAM}\n")
    print("| model | budget | local vs local | RPC vs local | max abs diff RPC (local) | sparse steps local / RPC "
          "| sparse layers | verify_codes local / RPC | RPC devices | local / RPC s |")
    print("|---|---:|---|---|---:|---:|---:|---:|---|---:|")
    failures = []
    for model in models:
        for budget in budgets:
            a = run(model, budget, args, None, None, None)
            b = run(model, budget, args, None, a["prompt"], a["path"])
            r = run(model, budget, args, args.server, a["prompt"], a["path"])
            d_local = float(np.abs(b["logits"] - a["logits"]).max())
            d_rpc = float(np.abs(r["logits"] - a["logits"]).max())
            same_local = np.array_equal(a["logits"], b["logits"])
            same_rpc = np.array_equal(a["logits"], r["logits"])
            name = f"{model.name} b{budget}"
            if same_local and not same_rpc:
                failures.append(f"{name}: RPC differs from local (max |diff| {d_rpc:g}), local runs are bitwise equal")
            if not same_local:
                print(f"note: {name}: the local device is not run-to-run deterministic (max |diff| {d_local:g})",
                      file=sys.stderr)
                tol = max(2 * d_local, 1e-3 * float(np.abs(a["logits"]).max()))
                if d_rpc > tol:
                    failures.append(f"{name}: RPC max |diff| {d_rpc:g} > {tol:g} (the local runs differ by {d_local:g})")
            if not np.isfinite(r["logits"]).all():
                failures.append(f"{name}: non-finite logits through RPC")
            for who, x in (("local", a), ("RPC", r)):
                if x["reason"]:
                    failures.append(f"{name}: Adamas unavailable {who}: {x['reason']}")
                if budget and x["steps"] <= 0:
                    failures.append(f"{name}: no sparse steps {who}")
                if not budget and x["steps"] != 0:
                    failures.append(f"{name}: sparse steps {who} while dense")
                if budget and x["verify"] not in (0, -1):
                    failures.append(f"{name}: verify_codes {who} = {x['verify']}")
            if not r["devices"] or not r["devices"][0].startswith("RPC"):
                failures.append(f"{name}: the model's devices are {r['devices']}")
            fmt = lambda v: "n/a" if v is None else ("could not run" if v == -1 else str(v))
            print(f"| {model.name} | {budget} | {'bitwise' if same_local else 'differ'} | "
                  f"{'bitwise' if same_rpc else 'differ'} | {d_rpc:g} ({d_local:g}) | {a['steps']} / {r['steps']} | "
                  f"{r['sparse_layers']} | {fmt(a['verify'])} / {fmt(r['verify'])} | {', '.join(r['devices'])} | "
                  f"{a['secs']:.2f} / {r['secs']:.2f} |", flush=True)
    print()
    for f in failures:
        print(f"FAIL {f}")
    print("FAIL" if failures else "PASS: Adamas through the rpc-server equals local decoding")
    return 1 if failures else 0


ROW = re.compile(r"^\| (?P<model>[^|]+) \| (?P<depth>\d+) \| [^|]+ \| (?P<budget>\d+) \| [^|]* \| (?P<tps>[\d.]+) \| "
                 r"(?P<sd>[\d.]+) \| [^|]* \| (?P<steps>\d+) \|$")


def bench(args) -> int:
    out = []

    def emit(s=""):
        print(s, flush=True)
        out.append(s)

    base = [args.bench, "-m", args.model, "-d", args.depth, "-b", args.budgets, "-n", str(args.n), "-r", str(args.reps)]
    if args.threads:
        base += ["-t", str(args.threads)]
    tables = {}
    for where, extra in (("local", []), ("RPC", ["--rpc", args.server])):
        t0 = time.perf_counter()
        r = subprocess.run(base + extra, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        emit(f"### {where}: `{' '.join(base[1:] + extra)}` ({wall:.0f} s with load and prefill)\n")
        emit(r.stdout.rstrip())
        notes = [ln for ln in r.stderr.splitlines() if "prefill" in ln or "Adamas" in ln]
        emit("\n" + "\n".join(f"    {ln}" for ln in notes) + "\n" if notes else "")
        if r.returncode != 0:
            emit(f"FAIL: exit code {r.returncode}\n```\n{r.stderr[-3000:]}\n```")
            Path(args.out).write_text("\n".join(out) + "\n") if args.out else None
            return 1
        tables[where] = {(int(m["depth"]), int(m["budget"])): m for m in map(ROW.match, r.stdout.splitlines()) if m}
    emit("### the per-token cost of RPC\n")
    emit("| depth | budget | local t/s | RPC t/s | local ms/token | RPC ms/token | RPC cost ms/token | sparse steps local / RPC |")
    emit("|---:|---:|---:|---:|---:|---:|---:|---:|")
    rc = 0
    for key, lo in sorted(tables["local"].items()):
        rp = tables["RPC"].get(key)
        if rp is None:
            emit(f"| {key[0]} | {key[1]} | {lo['tps']} | missing | | | | |")
            rc = 1
            continue
        ml, mr = 1000 / float(lo["tps"]), 1000 / float(rp["tps"])
        emit(f"| {key[0]} | {key[1]} | {lo['tps']} | {rp['tps']} | {ml:.2f} | {mr:.2f} | {mr - ml:+.2f} | "
             f"{lo['steps']} / {rp['steps']} |")
        if lo["steps"] != rp["steps"]:
            rc = 1
    if not tables["local"]:
        rc = 1
    emit("\nPASS" if rc == 0 else "\nFAIL: a row is missing or the sparse steps differ")
    if args.out:
        Path(args.out).write_text("\n".join(out) + "\n")
    return rc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="logits through the server against local, every step")
    c.add_argument("--server", required=True, help="HOST:PORT of an rpc-server of this build")
    c.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="the local run's device")
    c.add_argument("--model", action="append", help="a GGUF (repeatable; default $ADAMAS_MODEL, else tiny ones)")
    c.add_argument("--budget", type=int, default=64)
    c.add_argument("--prompt", type=int, default=200, help="random prompt tokens (past the budget)")
    c.add_argument("--steps", type=int, default=32)
    c.add_argument("--ctx", type=int, default=512)
    c.add_argument("--threads", type=int, default=None, help="CPU threads (default: 1 on cpu, 4 on cuda)")
    b = sub.add_parser("bench", help="bench-adamas-decode locally and through the server")
    b.add_argument("--server", required=True)
    b.add_argument("--bench", required=True, help="the bench-adamas-decode binary")
    b.add_argument("--model", required=True)
    b.add_argument("--depth", default="32768")
    b.add_argument("--budgets", default="0,64")
    b.add_argument("-n", type=int, default=64)
    b.add_argument("--reps", type=int, default=3)
    b.add_argument("--threads", type=int, default=0)
    b.add_argument("--out", help="also write the markdown here")
    args = ap.parse_args(argv)
    if args.cmd == "check":
        if args.threads is None:
            args.threads = 1 if args.device == "cpu" else 4
        if args.prompt <= args.budget:
            ap.error("--prompt must be past --budget")
        return check(args)
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
