"""Evaluation of Adamas against dense attention, on one model, in one process: passkey retrieval and
token-by-token perplexity (the paper's protocols, §4.1 and §4.3 of the design notes). `bench.py` measures
decode speed. Each writes a markdown table, a JSON file and a PNG plot (`report.py`).

The runs (`Config`) are a budget and the other Adamas parameters; dense (budget 0) is always the first,
the reference. Every sparse run feeds its tokens one at a time, so each prediction is a decode step that
goes through the sparse path once the context exceeds the budget.
"""
from __future__ import annotations

import ctypes
import dataclasses
import math
import random
import re
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from .adamas import RECENT_AUTO, AdamasParams

# the paper's passkey generator (landmark attention's): filler, the key line at a depth, the question
PASSKEY_TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
                "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
PASSKEY_QUESTION = "What is the pass key? The pass key is"
TAIL_CHARS = 400   # the paper decodes the prompt's last 400 characters token by token
ANSWER_TOKENS = 10  # then up to 10 greedy tokens; the first integer in them must be the key
KEY_RANGE = (1, 50000)


class EvalError(ValueError):
    """A bad request (a length the model cannot hold, an empty text...): reported as one line."""


def passkey_text(n_filler: int, depth: float, key: int) -> str:
    """The prompt with `n_filler` filler sentences groups, the key line after `depth` of them."""
    before = round(n_filler * depth)
    return "\n".join([PASSKEY_TASK, " ".join([FILLER] * before),
                      f"The pass key is {key}. Remember it. {key} is the pass key.",
                      " ".join([FILLER] * (n_filler - before)), PASSKEY_QUESTION])


def passkey_tokens(tokenize: Callable[[str], list], length: int, depth: float, key: int) -> list:
    """The longest passkey prompt of at most `length` tokens (the filler count searched for)."""
    def n_tok(n: int) -> int:
        return len(tokenize(passkey_text(n, depth, key)))

    if n_tok(1) > length:
        raise EvalError(f"a passkey prompt needs at least {n_tok(1)} tokens; length {length} is too short")
    lo, hi = 1, 2
    while n_tok(hi) <= length:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # the largest n with n_tok(n) <= length
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if n_tok(mid) <= length else (lo, mid)
    return tokenize(passkey_text(lo, depth, key))


def first_integer(text: str) -> Optional[int]:
    m = re.search(r"\d+", text)
    return int(m.group()) if m else None


# ------------------------------------------------------------------------------------------------
# configurations


@dataclass(frozen=True)
class Config:
    """One evaluated setting: a name (the variant it came from) and its Adamas parameters."""
    name: str
    params: AdamasParams

    @property
    def budget(self) -> int:
        return self.params.budget

    @property
    def label(self) -> str:
        return "dense" if self.params.dense else f"{self.name} b{self.budget}"

    def to_json(self) -> dict:
        return {"name": self.name, "label": self.label, **dataclasses.asdict(self.params)}


# variant keys: the CLI's flag names (and the AdamasParams fields they set)
VARIANT_KEYS = {"dense-layers": "n_dense", "thr-mode": "thr_mode", "thr-q": "thr_q", "thr-k": "thr_k",
                "thr": ("thr_q", "thr_k"), "select": "select", "sink": "n_sink", "recent": "n_recent",
                "rerank": "rerank"}


def parse_variant(spec: str) -> tuple[str, dict]:
    """`thr-mode=rms,thr=0.5,select=head` -> (the spec, {AdamasParams field: value}). `recent=25%`
    is kept as the string '25%' (a share of each budget, resolved by `make_configs`)."""
    out: dict = {}
    for part in spec.split(","):
        key, eq, val = part.strip().partition("=")
        if not eq or not val:
            raise EvalError(f"variant {spec!r}: {part!r} is not KEY=VALUE (keys: {', '.join(VARIANT_KEYS)})")
        if key not in VARIANT_KEYS:
            raise EvalError(f"variant {spec!r}: unknown key {key!r} (keys: {', '.join(VARIANT_KEYS)})")
        fields = VARIANT_KEYS[key]
        for f in (fields if isinstance(fields, tuple) else (fields,)):
            if f in ("thr_mode", "select"):
                out[f] = val
            elif f in ("thr_q", "thr_k"):
                try:
                    out[f] = float(val)
                except ValueError:
                    raise EvalError(f"variant {spec!r}: {key}={val!r} is not a number") from None
            elif f == "n_recent" and val == "auto":
                out[f] = RECENT_AUTO
            elif f == "n_recent" and val.endswith("%"):
                try:
                    pct = float(val[:-1])
                except ValueError:
                    pct = -1.0
                if not 0 <= pct <= 100:
                    raise EvalError(f"variant {spec!r}: recent={val!r} must be a share from 0% to 100%")
                out[f] = val
            else:
                try:
                    out[f] = int(val, 10)
                except ValueError:
                    raise EvalError(f"variant {spec!r}: {key}={val!r} is not an integer") from None
    return spec, out


def make_configs(base: AdamasParams, budgets: Sequence[int], variants: Sequence[str]) -> list:
    """Dense first, then every variant (or the base parameters alone) at every budget, checked now so
    that a bad combination fails before any model time is spent."""
    if not budgets:
        raise EvalError("give at least one budget")
    for b in budgets:
        if b <= 0:
            raise EvalError(f"budget {b}: budgets must be >= 1 (dense, budget 0, is always run as the reference)")
    parsed = [parse_variant(v) for v in variants] or [("default", {})]
    configs = [Config("dense", base.replace(budget=0))]
    for name, fields in parsed:
        for b in dict.fromkeys(budgets):
            f = dict(fields)
            if isinstance(f.get("n_recent"), str):
                f["n_recent"] = int(b * float(f["n_recent"][:-1]) / 100)
            try:
                params = base.replace(budget=b, **f)
            except (ValueError, TypeError) as e:
                raise EvalError(f"variant {name!r} at budget {b}: {e}") from None
            configs.append(Config(name, params))
    return configs


# ------------------------------------------------------------------------------------------------
# driving a context token by token


class Runner:
    """A `Llama` used for evaluation: a dense prefill, a snapshot of it, single-token decode steps whose
    logits are read, and restoring the snapshot before the next configuration.

    Restoring goes through llama_state_set_data, not seq_rm alone: every configuration starts from the
    same cells, and the load marks the key codes stale, so that the next decode re-encodes them with the
    configuration's own thresholds."""

    def __init__(self, llm):
        from ._lib import llama_cpp
        self.llm = llm
        self._lc = llama_cpp
        self.n_vocab = llm.n_vocab()
        self._snap: Optional[tuple] = None

    @property
    def ctx(self) -> int:
        return self.llm._ctx_ptr()

    def set(self, params: AdamasParams) -> None:
        self.llm.set_adamas(params)

    def reset(self) -> None:
        self.llm.reset()  # n_tokens = 0: the next eval removes every cell (seq_rm from n_tokens on)

    def prefill(self, tokens: Sequence[int]) -> None:
        self.reset()
        if tokens:
            self.llm.eval(list(tokens))

    def snapshot(self) -> None:
        n = self._lc.llama_state_get_size(self.ctx)
        buf = (ctypes.c_uint8 * n)()
        got = self._lc.llama_state_get_data(self.ctx, buf, n)
        self._snap = (buf, int(got), self.llm.n_tokens, self.llm.input_ids[:self.llm.n_tokens].copy())

    def restore(self) -> None:
        buf, n, n_tokens, ids = self._snap
        if self._lc.llama_state_set_data(self.ctx, buf, n) != n:
            raise RuntimeError("llama_state_set_data failed")
        self.llm.n_tokens = n_tokens
        self.llm.input_ids[:n_tokens] = ids

    def step(self, token: int) -> np.ndarray:
        """Decode one token; the logits of the next (float32, a copy)."""
        self.llm.eval([token])
        ptr = self._lc.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    @property
    def sparse_steps(self) -> int:
        return self.llm.adamas_sparse_steps


def log_softmax_at(logits: np.ndarray, token: int) -> float:
    """log p(token) under softmax(logits), in float64."""
    x = logits.astype(np.float64)
    m = x.max()
    return float(x[token] - m - math.log(np.exp(x - m).sum()))


class Progress:
    """One line per finished item on stderr: `[i/n] what  result  (elapsed, eta)`."""

    def __init__(self, total: int, quiet: bool = False, stream=None):
        self.total, self.done, self.quiet = total, 0, quiet
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = time.monotonic()

    def __call__(self, what: str) -> None:
        self.done += 1
        if self.quiet:
            return
        el = time.monotonic() - self.t0
        eta = el / self.done * (self.total - self.done)
        try:
            print(f"[{self.done}/{self.total}] {what}  ({el:.0f} s, ~{eta:.0f} s left)", file=self.stream,
                  flush=True)
        except (OSError, ValueError):
            pass


# ------------------------------------------------------------------------------------------------
# passkey


def passkey_trials(lengths: Sequence[int], n_depths: int, seed: int) -> list:
    """(length, depth, key) for every length and depth; depths evenly spread over (0, 1), keys from the
    seed (one per depth, the same at every length)."""
    rng = random.Random(seed)
    depths = [(i + 0.5) / n_depths for i in range(n_depths)]
    keys = [rng.randint(*KEY_RANGE) for _ in depths]
    return [(n, d, k) for n in lengths for d, k in zip(depths, keys)]


def tail_tokens(detok: Callable[[list], bytes], tokens: Sequence[int], chars: int) -> int:
    """How many of the last tokens make up at least the last `chars` characters (at least 1)."""
    n, total = 0, 0
    for t in reversed(tokens):
        if total >= chars or n == len(tokens) - 1:
            break
        total += len(detok([t]).decode("utf-8", errors="replace"))
        n += 1
    return max(n, 1)


def _answers(runner: "Runner", vocab, configs: Sequence[Config], toks: list, n_tail: int, max_new: int,
             decided: Callable[[str], bool]):
    """Per configuration: (config, greedy answer, sparse steps). The prompt but its last n_tail tokens is
    prefilled once, dense, and shared; the tail is fed token by token (the sparse decode path), then up to
    max_new greedy tokens, until an end-of-generation token or `decided(answer so far)`."""
    runner.set(configs[0].params)
    runner.prefill(toks[:-n_tail])
    runner.snapshot()
    for cfg in configs:
        runner.set(cfg.params)
        runner.restore()
        s0 = runner.sparse_steps
        for t in toks[-n_tail:]:
            logits = runner.step(t)
        out: list = []
        text = ""
        for _ in range(max_new):
            t = int(np.argmax(logits))
            if runner._lc.llama_vocab_is_eog(vocab, t):
                break
            out.append(t)
            text = runner.llm.detokenize(out).decode("utf-8", errors="replace")
            if decided(text):
                break
            logits = runner.step(t)
        yield cfg, text, runner.sparse_steps - s0


def run_passkey(runner: Runner, configs: Sequence[Config], lengths: Sequence[int], n_depths: int, seed: int,
                tail_chars: int = TAIL_CHARS, progress: Optional[Progress] = None) -> dict:
    """The paper's passkey protocol for every length x depth: one dense prefill of all but the tail, then
    per configuration the tail fed token by token and up to ANSWER_TOKENS greedy tokens; found when the
    first integer of the answer is the key."""
    llm = runner.llm
    vocab = runner._lc.llama_model_get_vocab(llm.model)
    trials = passkey_trials(lengths, n_depths, seed)
    results = []
    for length, depth, key in trials:
        toks = passkey_tokens(lambda s: llm.tokenize(s.encode()), length, depth, key)
        n_tail = tail_tokens(llm.detokenize, toks, tail_chars)
        def decided(text: str) -> bool:
            return re.search(r"\d+\D", text) is not None  # a complete number: the answer is decided
        for cfg, text, n_sparse in _answers(runner, vocab, configs, toks, n_tail, ANSWER_TOKENS, decided):
            found = first_integer(text) == key
            results.append({"length": length, "n_tokens": len(toks), "n_tail": n_tail, "depth": round(depth, 4),
                            "key": key, "config": cfg.label, "budget": cfg.budget, "answer": text,
                            "found": found, "sparse_steps": n_sparse})
            if progress:
                progress(f"length {length} ({len(toks)} tokens) depth {depth:.2f} {cfg.label}: "
                         f"{'found' if found else 'MISSED'} {text.strip()!r}")
    return {"results": results}


def passkey_summary(results: list, configs: Sequence[Config], lengths: Sequence[int]) -> list:
    """Rows: per configuration, found/trials per length and in all, and whether it found the key exactly
    where dense did."""
    def found_set(label: str) -> set:
        return {(x["length"], x["depth"]) for x in results if x["config"] == label and x["found"]}

    dense = found_set(configs[0].label)
    rows = []
    for cfg in configs:
        r = [x for x in results if x["config"] == cfg.label]
        per = {n: (sum(x["found"] for x in r if x["length"] == n), sum(1 for x in r if x["length"] == n))
               for n in lengths}
        rows.append({"config": cfg.label, "name": cfg.name, "budget": cfg.budget,
                     "per_length": {str(n): list(v) for n, v in per.items()},
                     "found": sum(x["found"] for x in r), "trials": len(r),
                     "equals_dense": found_set(cfg.label) == dense,
                     "sparse_steps": sum(x["sparse_steps"] for x in r)})
    return rows


# ------------------------------------------------------------------------------------------------
# perplexity


def run_ppl(runner: Runner, configs: Sequence[Config], tokens: Sequence[int],
            progress: Optional[Progress] = None, every: int = 256) -> dict:
    """Perplexity with every token after the first fed alone (the paper's PG-19 protocol): token i's
    prediction comes from the decode step of token i-1. Returns per configuration the NLL of each
    predicted token."""
    runs = []
    for cfg in configs:
        runner.set(cfg.params)
        runner.reset()
        s0 = runner.sparse_steps
        t0 = time.monotonic()
        nll = np.empty(len(tokens) - 1)
        for i in range(len(tokens) - 1):
            logits = runner.step(tokens[i])
            nll[i] = -log_softmax_at(logits, tokens[i + 1])
            if progress and not progress.quiet and (i + 1) % every == 0:
                try:
                    print(f"    {cfg.label}: {i + 1}/{len(tokens) - 1} tokens, ppl so far "
                          f"{math.exp(nll[:i + 1].mean()):.4f}", file=progress.stream, flush=True)
                except (OSError, ValueError):
                    pass
        ppl = math.exp(float(nll.mean()))
        runs.append({"config": cfg.label, "name": cfg.name, "budget": cfg.budget, "ppl": ppl,
                     "n_predicted": len(nll), "sparse_steps": runner.sparse_steps - s0,
                     "seconds": round(time.monotonic() - t0, 2), "nll": nll})
        if progress:
            progress(f"{cfg.label}: ppl {ppl:.4f}")
    return {"runs": runs}


# ------------------------------------------------------------------------------------------------
# RULER-style tasks (ruler.py generates and scores them)

RULER_ANSWER_MARGIN = 8  # greedy tokens beyond the length of the expected answer


def ruler_trials(tasks: Sequence[str], lengths: Sequence[int], n_samples: int) -> list:
    """(length, task, sample index) for every length, task and sample; the same sample index draws the
    same needles at every length (only the haystack grows)."""
    return [(n, t, i) for n in lengths for t in tasks for i in range(n_samples)]


def run_ruler(runner: Runner, configs: Sequence[Config], tasks: Sequence[str], lengths: Sequence[int],
              n_samples: int, seed: int, tail_chars: int = TAIL_CHARS,
              progress: Optional[Progress] = None) -> dict:
    """Every trial: one dense prefill of all but the tail (at least the question and the answer prefix, and
    at least `tail_chars` characters), then per configuration the tail fed token by token and greedy tokens
    until every expected item is in the answer, an end-of-generation token, or the expected answer's length
    plus RULER_ANSWER_MARGIN tokens; scored by ruler.score."""
    from . import ruler
    llm = runner.llm
    vocab = runner._lc.llama_model_get_vocab(llm.model)

    def tok(s: str, bos: bool = True) -> list:
        return llm.tokenize(s.encode("utf-8"), add_bos=bos)

    results = []
    for length, task, index in ruler_trials(tasks, lengths, n_samples):
        try:
            s = ruler.make_sample(task, lambda t: len(tok(t)), length, seed, index)
        except ruler.RulerError as e:
            raise EvalError(str(e)) from None
        toks = tok(s.prompt)
        n_tail = min(len(toks) - 1, max(tail_tokens(llm.detokenize, toks, max(tail_chars, len(s.query))),
                                        len(tok(s.query, bos=False))))
        max_new = len(tok(" " + ", ".join(s.expected), bos=False)) + RULER_ANSWER_MARGIN
        def decided(text: str) -> bool:
            return ruler.complete(text, s.expected, s.kind)  # more tokens cannot change the score
        for cfg, text, n_sparse in _answers(runner, vocab, configs, toks, n_tail, max_new, decided):
            sc = ruler.score(text, s.expected, s.kind)
            results.append({"length": length, "task": task, "sample": index, "n_tokens": len(toks),
                            "n_tail": n_tail, "config": cfg.label, "budget": cfg.budget,
                            "expected": list(s.expected), "answer": text, "score": sc,
                            "sparse_steps": n_sparse})
            if progress:
                progress(f"{task} length {length} ({len(toks)} tokens) #{index} {cfg.label}: "
                         f"{100 * sc:.0f}% {text.strip()[:60]!r}")
    return {"results": results}


def ruler_summary(results: list, configs: Sequence[Config], tasks: Sequence[str], lengths: Sequence[int]) -> list:
    """Rows: per configuration, the mean score (%) per task, per length (the mean over tasks of the task
    means at that length) and in all (the mean over tasks: every task weighs the same, RULER's average);
    the difference in points to dense and, where one ran at the same budget, to the exact reference."""
    def mean(xs) -> float:
        xs = list(xs)
        return 100 * sum(xs) / len(xs) if xs else float("nan")

    rows = []
    for cfg in configs:
        r = [x for x in results if x["config"] == cfg.label]
        per_task = {t: mean(x["score"] for x in r if x["task"] == t) for t in tasks}
        per_len = {str(n): mean([mean(x["score"] for x in r if x["task"] == t and x["length"] == n) / 100
                                 for t in tasks]) for n in lengths}
        rows.append({"config": cfg.label, "name": cfg.name, "budget": cfg.budget,
                     "select": cfg.params.select, "per_task": per_task, "per_length": per_len,
                     "average": mean(v / 100 for v in per_task.values()), "trials": len(r),
                     "sparse_steps": sum(x["sparse_steps"] for x in r)})
    dense = rows[0]["average"]
    exact = {row["budget"]: row["average"] for row in rows if row["select"] == "exact" and row["budget"]}
    for row in rows:
        row["vs_dense"] = None if row["budget"] == 0 else row["average"] - dense
        row["vs_exact"] = (None if row["budget"] == 0 or row["select"] == "exact" or row["budget"] not in exact
                           else row["average"] - exact[row["budget"]])
    return rows
