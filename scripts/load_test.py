#!/usr/bin/env python3
"""Load test: llama-server with Adamas against dense, many clients at once.

    python scripts/load_test.py [-m MODEL] [-np 8] [--clients 8] [--prompt-tokens 3000] [-n 64] [--budgets 0,64]

For each budget, llama-server (this package's, built with `make server`) is started on 127.0.0.1 with -np
slots, and --clients concurrent clients (plain HTTP, urllib) each send one long prompt of random token ids
(seeded, a different prompt per client) to /completion, greedy, --n-predict tokens each (ignore_eos). Reported
per budget: failed requests, wall time, aggregate generated tokens/s, per-request latency (mean, p50, max)
and the server's sparse decode steps (its log line "adamas: N sparse decode steps", written by
common_adamas_report when the server stops). Any failed request makes the exit code 1.

--check-dense also starts a server at a budget above the slot context (every step within the budget: dense
and exact) and one at budget 0, sends each prompt alone (one at a time: the same batches for both), and
requires equal outputs. Concurrent outputs are compared too and reported, not required: which requests share a
step changes the cache layout and so the order of float sums.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

STEPS_RE = re.compile(r"adamas: (\d+) sparse decode steps")


def default_server() -> Path:
    """adamas_gguf/bin/llama-server of the installed package (found without importing it)."""
    spec = importlib.util.find_spec("adamas_gguf")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("load_test: error: adamas_gguf is not installed; run `make server` first")
    return Path(list(spec.submodule_search_locations)[0]) / "bin" / "llama-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """llama-server as a subprocess on 127.0.0.1; its log (stdout and stderr) goes to `log`."""

    def __init__(self, binary: Path, model: Path, log: Path, args: list[str], timeout: float = 600):
        self.port = free_port()
        self.log = log
        self.hung = False  # stop() needed a second signal (see there)
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port), *args]
        self._f = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                pass
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise RuntimeError(f"llama-server not ready after {timeout:.0f} s:\n{self.text()[-3000:]}")
            time.sleep(0.2)

    def text(self) -> str:
        self._f.flush()
        return self.log.read_text(errors="replace")

    def stop(self, settle: float = 1.0) -> str:
        """SIGTERM (the server then frees its context, which logs the sparse steps); its log.

        Upstream's signal handler locks the task queue's mutex, so a SIGTERM that lands while a server thread
        holds it (just after the last answer, as the slots are released) deadlocks the server; seen once in CI.
        So: `settle` seconds of quiet first, and if it still hangs after 30 s, a second signal (upstream's
        "second interrupt": exit 1 at once), said in the log and in `hung`."""
        if self.proc.poll() is None:
            time.sleep(settle)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.hung = True
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self._f.close()
        text = self.log.read_text(errors="replace")
        if self.hung:
            text += "\nload_test: llama-server hung on SIGTERM (upstream's handler takes a mutex); a second signal ended it\n"
        return text

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def sparse_steps(log: str) -> int | None:
    m = STEPS_RE.findall(log)
    return int(m[-1]) if m else None


def complete(url: str, prompt, n_predict: int, timeout: float = 3600) -> dict:
    """POST /completion, greedy; the server's JSON plus `latency_s` (request to full answer)."""
    body = json.dumps({"prompt": prompt, "n_predict": n_predict, "temperature": 0.0, "top_k": 1,
                       "ignore_eos": True, "cache_prompt": False, "stream": False}).encode()
    req = urllib.request.Request(url + "/completion", data=body, headers={"Content-Type": "application/json"})
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        out = json.loads(r.read())
    out["latency_s"] = time.monotonic() - t0
    return out


def run_clients(url: str, prompts: list, n_predict: int) -> tuple[list, float]:
    """All prompts at once, one thread each; (results or exceptions, wall seconds)."""
    results: list = [None]*len(prompts)

    def one(i):
        try:
            results[i] = complete(url, prompts[i], n_predict)
        except Exception as e:  # reported per request, the others go on
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.monotonic() - t0


def random_prompts(n: int, n_tokens: int, n_vocab: int, seed: int) -> list[list[int]]:
    # token ids from 100 on: clear of the control tokens at the start of the usual vocabularies
    rng = random.Random(seed)
    return [[rng.randrange(100, n_vocab) for _ in range(n_tokens)] for _ in range(n)]


def server_args(a, budget: int) -> list[str]:
    return ["-np", str(a.np), "-c", str(a.np*a.slot_ctx), "-ngl", str(a.ngl), "-fa", "on",
            "--adamas-budget", str(budget), "--no-webui", *(["-t", str(a.threads)] if a.threads else []),
            *a.server_arg]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", type=Path, help="GGUF model (default: the package's default model)")
    ap.add_argument("--server", type=Path, help="llama-server binary (default: the installed package's)")
    ap.add_argument("-np", type=int, default=8, help="server slots (default: 8)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients, one request each (default: 8)")
    ap.add_argument("--prompt-tokens", type=int, default=3000, help="prompt length in tokens (default: 3000)")
    ap.add_argument("-n", "--n-predict", type=int, default=64, help="tokens generated per request (default: 64)")
    ap.add_argument("--slot-ctx", type=int, help="context per slot (default: prompt + n-predict, rounded up to 256)")
    ap.add_argument("--budgets", default="0,64", help="Adamas budgets to compare, 0 = dense (default: 0,64)")
    ap.add_argument("--check-dense", action="store_true",
                    help="also require that a budget above the slot context gives dense's outputs")
    ap.add_argument("-ngl", type=int, default=0, help="layers on the GPU (default: 0)")
    ap.add_argument("-t", "--threads", type=int, help="server threads (default: the server's)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--logs", type=Path, default=Path("/tmp"), help="folder for the server logs (default: /tmp)")
    ap.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                    help="one more llama-server argument (repeatable), e.g. --server-arg=-ctk --server-arg=q8_0")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args(argv)
    budgets = [int(b) for b in a.budgets.split(",")]
    if a.np < 1 or a.clients < 1 or a.prompt_tokens < 1 or a.n_predict < 1 or any(b < 0 for b in budgets):
        ap.error("-np, --clients, --prompt-tokens and -n must be >= 1, budgets >= 0")
    a.slot_ctx = a.slot_ctx or (a.prompt_tokens + a.n_predict + 255)//256*256
    if a.prompt_tokens + a.n_predict > a.slot_ctx:
        ap.error(f"--slot-ctx {a.slot_ctx} holds fewer than prompt + n-predict = {a.prompt_tokens + a.n_predict} tokens")
    binary = a.server or default_server()
    if not binary.is_file():
        ap.error(f"{binary}: no llama-server there; build it with `make server`")
    if a.model is None:
        # the installed package (its libraries and model cache), not the source tree's: that holds no libraries
        try:
            from adamas_gguf import models
        except ImportError as e:
            ap.error(f"no model given and adamas_gguf is not installed for this Python ({e}): pass -m MODEL")
        a.model = models.default_model_path()
    n_vocab = read_n_vocab(a.model)
    prompts = random_prompts(a.clients, a.prompt_tokens, n_vocab, a.seed)
    a.logs.mkdir(parents=True, exist_ok=True)

    rows, failed, outputs = [], 0, {}
    print(f"model {a.model.name}, {a.np} slots x {a.slot_ctx} tokens, {a.clients} clients x "
          f"{a.prompt_tokens}-token prompts, {a.n_predict} tokens generated each")
    print("| budget | failed | wall s | gen t/s (all clients) | latency mean s | p50 s | max s | "
          "decode t/s per request | sparse steps |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for b in budgets:
        with Server(binary, a.model, a.logs / f"load_test-budget{b}.log", server_args(a, b)) as srv:
            res, wall = run_clients(srv.url, prompts, a.n_predict)
            log = srv.stop()
        ok = [r for r in res if isinstance(r, dict)]
        bad = [r for r in res if not isinstance(r, dict)]
        for e in bad:
            print(f"budget {b}: request failed: {e}", file=sys.stderr)
        failed += len(bad)
        outputs[b] = [r.get("content") if isinstance(r, dict) else None for r in res]
        lat = [r["latency_s"] for r in ok]
        gen = sum(r.get("tokens_predicted", 0) for r in ok)
        per = [r["timings"]["predicted_per_second"] for r in ok if "timings" in r]
        row = dict(budget=b, failed=len(bad), wall_s=wall, gen_tps=gen/wall,
                   latency_mean_s=statistics.mean(lat) if lat else None,
                   latency_p50_s=statistics.median(lat) if lat else None, latency_max_s=max(lat) if lat else None,
                   decode_tps_per_request=statistics.mean(per) if per else None, sparse_steps=sparse_steps(log))
        rows.append(row)
        f = lambda x, p=2: "" if x is None else f"{x:.{p}f}"  # noqa: E731
        print(f"| {b} | {len(bad)} | {wall:.1f} | {f(row['gen_tps'])} | {f(row['latency_mean_s'])} | "
              f"{f(row['latency_p50_s'])} | {f(row['latency_max_s'])} | {f(row['decode_tps_per_request'])} | "
              f"{'' if row['sparse_steps'] is None else row['sparse_steps']} |", flush=True)

    check = None
    if a.check_dense:
        above = a.slot_ctx + 1
        seq = {}
        for b in (0, above):
            with Server(binary, a.model, a.logs / f"load_test-check{b}.log", server_args(a, b)) as srv:
                seq[b] = [complete(srv.url, p, a.n_predict)["content"] for p in prompts]
        same = sum(x == y for x, y in zip(seq[0], seq[above]))
        check = dict(budget=above, equal_alone=same, n=len(prompts))
        print(f"budget {above} (above the slot context) vs dense, each prompt alone: {same}/{len(prompts)} outputs equal")
        if 0 in outputs:
            conc = sum(x == y for x, y in zip(outputs[0], seq[above]))
            print(f"  (dense concurrent vs budget {above} alone: {conc}/{len(prompts)} equal; not required)")
    if a.json:
        a.json.write_text(json.dumps(dict(rows=rows, check=check, args={k: str(v) for k, v in vars(a).items()}),
                                     indent=1))
    if failed:
        print(f"load_test: {failed} failed requests", file=sys.stderr)
    if check and check["equal_alone"] != check["n"]:
        print("load_test: outputs above the budget differ from dense", file=sys.stderr)
        return 1
    return 1 if failed else 0


def read_n_vocab(path: Path) -> int:
    import gguf
    r = gguf.GGUFReader(str(path))
    for name in ("tokenizer.ggml.tokens",):
        f = r.fields.get(name)
        if f is not None:
            return len(f.data)
    raise SystemExit(f"load_test: error: {path}: no tokenizer.ggml.tokens")


if __name__ == "__main__":
    sys.exit(main())
