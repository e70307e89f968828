"""Where batch-1 decode time goes: GPU time of one decode launch against the number of key splits, plain and VAR.

    python benchmarks/decode_anatomy.py [--out DIR]            # DIR/decode_anatomy.{json,md}
    ncu --clock-control none --set full -k regex:decode_kernel python benchmarks/decode_anatomy.py --launch-only

The split count is forced through ``DECODE_SPLIT`` (every other choice is the default), so a row's time is the
launch's critical path at that many splits: the slowest split's key loop plus the merge that the last split to
finish runs. A cost that grows with the splits at a fixed key count lives in the merge (or in the per-split
prologue/epilogue); a cost that does not is per key or per launch. Same workload as ``kernels.py`` (bf16, 32 heads,
head_dim 128, its realistic VAR layout). Times are medians of CUDA-graph replays, ours and SDPA alternating.
``--launch-only`` runs each default variant a few times and nothing else, for a profiler to attach to.

The committed ``decode_anatomy.md`` also has the columns of the merge that summed over a (splits x head dim) tile,
measured in the same run before that merge was removed (it cost VAR 0.5-0.8 us per split).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import triton
from triton.testing import do_bench_cudagraph

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from kernels import D, DTYPE, H, _sdpa_decode, make_params  # noqa: E402
from vlmfix.kernels import triton_attention as ta  # noqa: E402

# keys per split -> splits at each N (the interesting range: 1 split up to past the default's)
PER_SPLIT = {640: (640, 320, 256, 128, 64), 2900: (2944, 1024, 512, 384, 256, 192, 128)}


def forced_split(keys_per_split: int) -> dict:
    """A ``DECODE_SPLIT`` that cuts every row into ``keys_per_split``-key pieces (no long-split configuration)."""
    return dict(min_keys=1 if keys_per_split else 1 << 30, keys_per_split=keys_per_split, waves=1 << 20,
                busy_keys_per_split=keys_per_split, busy_waves=1 << 20, long_keys=None, busy_long_keys=None,
                max_splits=1 << 20)


def graph_us(fn) -> float:
    return do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--launch-only", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    scale = D ** -0.5
    if args.launch_only:
        q = torch.randn(1, H, 1, D, device="cuda", dtype=DTYPE)
        k = torch.randn(1, H, 640, D, device="cuda", dtype=DTYPE)
        v = torch.randn_like(k)
        for method in ("none", "var"):
            p = make_params(method, 1, 640)
            for _ in range(3):
                ta.attention(q, k, v, scale=scale, params=p)
        torch.cuda.synchronize()
        return
    records = []
    meta = dict(command="python benchmarks/decode_anatomy.py", torch=torch.__version__, triton=triton.__version__,
                gpu=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))

    def rows():
        """Every (N, method, keys per split) row with its inputs, one set of tensors per N."""
        for n, per_split in PER_SPLIT.items():
            q = torch.randn(1, H, 1, D, device="cuda", dtype=DTYPE)
            k = torch.randn(1, H, n, D, device="cuda", dtype=DTYPE)
            v = torch.randn_like(k)
            for method in ("none", "var"):
                p = make_params(method, 1, n)
                for keys in per_split:
                    yield n, method, forced_split(keys if keys < n else 0), q, k, v, p

    def compile_all():  # every variant, compiled in parallel before anything is timed
        for n, method, split, q, k, v, p in rows():
            with ta.launch_choices(DECODE_SPLIT=split):
                ta.attention(q, k, v, scale=scale, params=p)

    meta["compile_ahead_s"] = round(ta.compile_ahead([compile_all]), 1)
    sdpa_us = {}
    for n, method, split, q, k, v, p in rows():
        if n not in sdpa_us:
            sdpa_us[n] = graph_us(_sdpa_decode(q, k, v, scale)[2])
        with ta.launch_choices(DECODE_SPLIT=split):
            _, _, splits, chunk = ta.decode_plan(n, H, "half", q.device)
            fn = lambda: ta.attention(q, k, v, scale=scale, params=p)  # noqa: E731
            fn()
            us = min(graph_us(fn) for _ in range(2))
        rec = dict(n=n, method=method, splits=splits, chunk=chunk, us=us, sdpa_us=sdpa_us[n])
        records.append(rec)
        print(json.dumps(rec), flush=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "decode_anatomy")
    with open(path + ".json.tmp", "w") as fh:
        json.dump(dict(meta=meta, records=records), fh, indent=1)
    os.replace(path + ".json.tmp", path + ".json")
    lines = [f"# Batch-1 decode against the number of splits ({meta['gpu']}, {meta['date']})", "",
             f"`{meta['command']}`; torch {meta['torch']}, triton {meta['triton']}. GPU µs per launch (CUDA-graph "
             "replay, best of two medians); bf16, 32 heads, head_dim 128.", "",
             "| N | splits | keys/split | none | VAR | SDPA |", "|---|---|---|---|---|---|"]
    for n in PER_SPLIT:
        rows = [r for r in records if r["n"] == n]
        for splits in sorted({r["splits"] for r in rows}):
            cell = {r["method"]: r for r in rows if r["splits"] == splits}
            any_r = next(iter(cell.values()))
            vals = [f"{cell[key]['us']:.2f}" if key in cell else "—" for key in ("none", "var")]
            lines.append(f"| {n} | {splits} | {any_r['chunk']} | " + " | ".join(vals) + f" | {any_r['sdpa_us']:.2f} |")
    with open(path + ".md.tmp", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(path + ".md.tmp", path + ".md")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
