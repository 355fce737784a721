#!/usr/bin/env python3
"""Where each kernel's warps stall, from Nsight Compute's per-instruction source view:

    ncu -i REPORT.ncu-rep --page source --csv --print-source sass > source.csv
    python scripts/ncu_stalls.py source.csv [--top 12]

For each kernel (its first launch in the report): the warp samples by stall reason, then the --top instructions
by samples, each with its two main reasons. `scripts/device.sh ncu` runs it on the kernel harness's report.
"""
from __future__ import annotations

import argparse
import collections
import csv
import sys


def read_kernels(path: str) -> tuple[list[str], list[dict]]:
    """The CSV's column names and, per kernel section, its name and instruction rows."""
    header: list[str] = []
    kernels: list[dict] = []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            if row[0] == "Kernel Name":
                kernels.append({"name": row[1], "rows": []})
            elif row[0] == "Address":
                header = row
            elif kernels and row[0].startswith("0x"):
                kernels[-1]["rows"].append(row)
    return header, kernels


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", help="ncu --page source --csv output")
    ap.add_argument("--top", type=int, default=12, help="instructions shown per kernel (default 12)")
    a = ap.parse_args()
    header, kernels = read_kernels(a.csv)
    if not header or not kernels:
        sys.exit(f"{a.csv}: no source view in it (ncu -i REPORT --page source --csv --print-source sass)")
    col = {h: i for i, h in enumerate(header)}
    samples = col["Warp Stall Sampling (All Samples)"]
    reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]

    def count(row: list[str], i: int) -> int:
        return int(row[i] or 0)

    seen = set()
    for k in kernels:
        if k["name"] in seen:  # later launches of the same kernel
            continue
        seen.add(k["name"])
        rows = k["rows"]
        total = sum(count(r, samples) for r in rows) or 1
        by_reason = collections.Counter({s: sum(count(r, col[s]) for r in rows) for s in reasons})
        print(f"\n=== {k['name'][:100]}  samples {total}  instructions {len(rows)}")
        print("  by reason: " + ", ".join(f"{s[6:]} {100 * v / total:.0f}%" for s, v in by_reason.most_common(7)))
        top = sorted(range(len(rows)), key=lambda i: -count(rows[i], samples))[:a.top]
        for i in sorted(top):
            r = rows[i]
            main2 = sorted(((count(r, col[s]), s[6:]) for s in reasons), reverse=True)[:2]
            print(f"  {i:5d} {count(r, samples):5d} {100 * count(r, samples) / total:4.1f}%  {r[1].strip()[:60]:60s} "
                  + ", ".join(f"{name} {n}" for n, name in main2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
