"""Writing an evaluation's results: a markdown table, a JSON file and a PNG plot (matplotlib, optional:
`pip install adamas_gguf[eval]`). Without matplotlib the markdown and JSON are still written and
`write_png` says why no PNG was made."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence


class NoMatplotlib(RuntimeError):
    """matplotlib is not installed: no PNG."""


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: Optional[str] = None) -> str:
    """A markdown table; `align` one character per column, 'l' or 'r' (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_json(path: Path, data: dict) -> None:
    """Indented, but a list or object of plain values, or any that fits in 100 characters, stays on one
    line: a result file of many short records reads (and diffs) as one record a line."""
    path.write_text(_dumps(json.loads(json.dumps(data, default=_jsonable)), "") + "\n")


def _dumps(x, indent: str) -> str:
    def plain(v) -> bool:
        return not isinstance(v, (dict, list)) or not v
    one = json.dumps(x)
    if isinstance(x, (dict, list)) and len(one) > 100 and \
            not all(map(plain, x.values() if isinstance(x, dict) else x)):
        inner = indent + " "
        if isinstance(x, dict):
            items = [f"{inner}{json.dumps(k)}: {_dumps(v, inner)}" for k, v in x.items()]
            return "{\n" + ",\n".join(items) + "\n" + indent + "}"
        return "[\n" + ",\n".join(inner + _dumps(v, inner) for v in x) + "\n" + indent + "]"
    return one


def write_json_gz(path: Path, data: dict) -> None:
    """Compact JSON, gzip-compressed: the per-token data behind a result (see ppl_split)."""
    import gzip
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(data, f, default=_jsonable, separators=(",", ":"))


def ppl_split(runs: list) -> tuple:
    """(the runs without their per-token NLLs, {"config": [...], "nll": [[...], ...]}): the summary goes
    into PREFIX.json, the NLLs (thousands of numbers a run) into PREFIX.nll.json.gz."""
    summary = [{k: v for k, v in r.items() if k != "nll"} for r in runs]
    return summary, {"config": [r["config"] for r in runs],
                     "nll": [[round(float(v), 6) for v in r["nll"]] for r in runs]}


def _jsonable(x):
    try:
        import numpy as np
        if isinstance(x, np.ndarray):
            return [round(float(v), 6) for v in x]
        if isinstance(x, np.generic):
            return x.item()
    except ImportError:
        pass
    raise TypeError(f"cannot write {type(x).__name__} as JSON")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise NoMatplotlib("matplotlib is not installed (pip install matplotlib, or adamas_gguf[eval])") from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    return plt


def write_png(path: Path, draw: Callable) -> None:
    """Calls draw(plt, fig) on a new figure and saves it; raises NoMatplotlib without matplotlib."""
    plt = _pyplot()
    fig = plt.figure(figsize=(7.5, 4.5), dpi=100)
    try:
        draw(plt, fig)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------------------
# the three reports


def passkey_markdown(rows: list, lengths: Sequence[int], meta: dict) -> str:
    header = ["configuration", "budget"] + [f"{n} tok" for n in lengths] + ["all", "= dense"]
    dense = next(r for r in rows if r["budget"] == 0)
    out = []
    for r in rows:
        cells = [f"{r['per_length'][str(n)][0]}/{r['per_length'][str(n)][1]}" for n in lengths]
        same = "" if r["budget"] == 0 else ("yes" if r.get("equals_dense") else "no")
        out.append([r["name"], r["budget"] or "dense", *cells, f"{r['found']}/{r['trials']}", same])
    return (f"Passkey retrieval, {meta['model']}: {meta['n_depths']} depths per length, seed {meta['seed']}; "
            f"the last {meta['tail_chars']} characters of each prompt fed token by token, then up to "
            f"{meta['answer_tokens']} greedy tokens. Dense found {dense['found']}/{dense['trials']}. "
            "\"= dense\": found exactly where dense found.\n\n" + md_table(header, out))


def passkey_plot(rows: list, lengths: Sequence[int]):
    def draw(plt, fig):
        ax = fig.add_subplot(1, 1, 1)
        dense = next(r for r in rows if r["budget"] == 0)
        ax.axhline(100 * dense["found"] / dense["trials"], color="black", ls="--", label="dense")
        for name in dict.fromkeys(r["name"] for r in rows if r["budget"]):
            rs = sorted((r for r in rows if r["name"] == name and r["budget"]), key=lambda r: r["budget"])
            ax.plot([r["budget"] for r in rs], [100 * r["found"] / r["trials"] for r in rs], marker="o",
                    label=name)
        ax.set_xscale("log", base=2)
        budgets = sorted({r["budget"] for r in rows if r["budget"]})
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("budget (tokens per head)")
        ax.set_ylabel("passkey found (%)")
        ax.set_ylim(-5, 105)
        ax.set_title(f"passkey retrieval, lengths {', '.join(map(str, lengths))}")
        ax.legend(fontsize=7)
    return draw


def ppl_markdown(runs: list, meta: dict) -> str:
    dense = next(r for r in runs if r["budget"] == 0)["ppl"]
    rows = [[r["name"], r["budget"] or "dense", f"{r['ppl']:.4f}",
             "" if r["budget"] == 0 else f"{100 * (r['ppl'] / dense - 1):+.2f}%", r["sparse_steps"]]
            for r in runs]
    return (f"Perplexity, {meta['model']}, {meta['text']}: {meta['n_tokens']} tokens, every token after the "
            f"first fed alone ({meta['n_tokens'] - 1} predictions, each by a decode step).\n\n"
            + md_table(["configuration", "budget", "ppl", "vs dense", "sparse steps"], rows))


def ppl_plot(runs: list, skip: int = 32):
    """The cumulative perplexity of each configuration relative to dense's, against the token position
    (the first `skip` predictions, where any perplexity is huge and every budget is dense, left out)."""
    def draw(plt, fig):
        import numpy as np
        ax = fig.add_subplot(1, 1, 1)

        def running(r):
            nll = np.asarray(r["nll"], dtype=np.float64)
            return np.exp(np.cumsum(nll) / np.arange(1, len(nll) + 1))

        dense = running(next(r for r in runs if r["budget"] == 0))
        x = np.arange(2, len(dense) + 2)[skip:]
        ax.axhline(0, color="black", lw=2.0, label=f"dense (ppl {dense[-1]:.3f})")
        for r in runs:
            if r["budget"]:
                ax.plot(x, 100 * (running(r) / dense - 1)[skip:], lw=1.2, label=f"{r['config']} ({r['ppl']:.3f})")
        ax.set_xlabel("tokens")
        ax.set_ylabel("cumulative perplexity vs dense (%)")
        ax.set_title("perplexity, every token fed alone")
        ax.legend(fontsize=6)
    return draw


def bench_markdown(rows: list, labels: Sequence[str], meta: dict) -> str:
    header = ["context", "dense"] + list(labels)
    out = []
    for r in rows:
        d = r["tps"]["dense"]
        cells = [f"{d:.1f} t/s"] + [f"{r['tps'][k]:.1f} t/s ({r['tps'][k] / d:.2f}x)" for k in labels]
        out.append([r["ctx"], *cells])
    return (f"Decode speed, {meta['model']}, {meta['threads']} threads: after a dense prefill of the context, "
            f"{meta['rounds']} interleaved rounds of {meta['steps']} greedy decode steps per setting; "
            "median tokens/s (ratio to dense).\n\n" + md_table(header, out, "r" * len(header)))


def bench_plot(rows: list, labels: Sequence[str]):
    def draw(plt, fig):
        ax = fig.add_subplot(1, 1, 1)
        x = [r["ctx"] for r in rows]
        ax.plot(x, [r["tps"]["dense"] for r in rows], marker="o", color="black", label="dense")
        for k in labels:
            ax.plot(x, [r["tps"][k] for r in rows], marker="o", label=k)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("decode tokens/s")
        ax.set_ylim(bottom=0)
        ax.set_title("decode speed")
        ax.legend(fontsize=7)
    return draw


def _pts(x) -> str:
    return "" if x is None else f"{x:+.1f}"


def ruler_markdown(rows: list, tasks: Sequence[str], lengths: Sequence[int], meta: dict) -> str:
    """Two tables: the average per length and in all (with the differences to dense and to the exact
    reference, in points), then the score of every task per configuration."""
    head = ["configuration", "budget"] + [f"{n} tok" for n in lengths] + ["average", "vs dense", "vs exact"]
    out = [[r["name"], r["budget"] or "dense", *[f"{r['per_length'][str(n)]:.1f}" for n in lengths],
            f"{r['average']:.1f}", _pts(r["vs_dense"]), _pts(r["vs_exact"])] for r in rows]
    per = [[t, *[f"{r['per_task'][t]:.0f}" for r in rows]] for t in tasks]
    return (f"RULER-style tasks, {meta['model']}: {meta['n_samples']} sample(s) per task and length, seed "
            f"{meta['seed']}; the prompt's tail (the question and answer prefix, at least {meta['tail_chars']} "
            "characters) fed token by token, then greedy tokens; score: the share of the expected items in the "
            "answer (%), averaged over the tasks (each weighs the same). \"vs dense\", \"vs exact\": points to "
            "dense and to the exact top-budget selection at the same budget.\n\n" + md_table(head, out)
            + "\nPer task (score %, all lengths):\n\n"
            + md_table(["task", *[r["config"] for r in rows]], per))


def ruler_plot(rows: list, tasks: Sequence[str], lengths: Sequence[int]):
    def draw(plt, fig):
        ax = fig.add_subplot(1, 2, 1)
        for r in rows:
            ax.plot(lengths, [r["per_length"][str(n)] for n in lengths], marker="o",
                    color="black" if r["budget"] == 0 else None, label=r["config"])
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel("average score (%)")
        ax.set_ylim(-5, 105)
        ax.set_title("RULER-style average")
        ax.legend(fontsize=6)
        ax = fig.add_subplot(1, 2, 2)
        w = 0.8 / len(rows)
        for i, r in enumerate(rows):
            ax.barh([j + i * w for j in range(len(tasks))], [r["per_task"][t] for t in tasks], height=w,
                    color="black" if r["budget"] == 0 else None, label=r["config"])
        ax.set_yticks([j + 0.4 - w / 2 for j in range(len(tasks))], list(tasks), fontsize=6)
        ax.invert_yaxis()
        ax.set_xlabel("score (%)")
        ax.set_xlim(0, 100)
        ax.set_title("per task")
    return draw
