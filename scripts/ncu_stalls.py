#!/usr/bin/env python3
"""Where each kernel's warps stall, from Nsight Compute's per-instruction source view:

    ncu -i REPORT.ncu-rep --page source --csv --print-source sass > source.csv
    python scripts/ncu_stalls.py source.csv [TOP]

For each kernel (its first launch): the samples by stall reason, then the TOP instructions by samples with their
two main reasons (`scripts/device.sh ncu` runs it on the harness's kernels)."""
import csv, sys, collections
rows = list(csv.reader(open(sys.argv[1])))
kernels = []; cur = None; hdr = None
for r in rows:
    if r and r[0] == "Kernel Name":
        cur = {"name": r[1], "rows": []}; kernels.append(cur); continue
    if r and r[0] == "Address": hdr = r; continue
    if cur is not None and r and r[0].startswith("0x"): cur["rows"].append(r)
seen = set()
for k in kernels:
    if k["name"] in seen: continue
    seen.add(k["name"])
    H = {h: i for i, h in enumerate(hdr)}
    S = H["Warp Stall Sampling (All Samples)"]
    stalls = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
    tot = sum(int(r[S] or 0) for r in k["rows"])
    agg = collections.Counter()
    for r in k["rows"]:
        for s in stalls: agg[s] += int(r[H[s]] or 0)
    print(f"\n=== {k['name'][:90]}  samples {tot}  instrs {len(k['rows'])}")
    print("  by reason:", ", ".join(f"{s[6:]} {100*v/tot:.0f}%" for s, v in agg.most_common(7)))
    top = sorted(enumerate(k["rows"]), key=lambda x: -int(x[1][S] or 0))[:int(sys.argv[2]) if len(sys.argv) > 2 else 12]
    for i, r in sorted(top):
        reasons = sorted(((int(r[H[s]] or 0), s[6:]) for s in stalls), reverse=True)[:2]
        print(f"  {i:5d} {int(r[S]):5d} {100*int(r[S])/tot:4.1f}%  {r[1].strip()[:60]:60s} {reasons}")
