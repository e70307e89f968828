"""Python garbage collections that a patched ``generate`` sets off, next to vanilla's.

    python benchmarks/gc_pressure.py [--rounds 6] [--tokens 128] [--configs vanilla,var+tstub,all+tstub]
                                     [--json PATH] [--md PATH]

Why this matters: a process that holds a model tracks a few hundred thousand Python objects, and a full (oldest
generation) collection walks all of them, for a time that is large next to a decode step. CPython starts one when the
objects that survived into the oldest generation since the last full collection exceed a quarter of those there, so
code that keeps a few objects per decode step alive for a while (a cache that grows, then is cleared) sets off full
collections every few generates, at random points of a timed run. Vanilla keeps next to nothing per step.

The model is ``profile_overhead.py``'s tiny-but-deep LLaVA (32 layers, CPU); ``+tstub`` runs the Triton wrapper's
whole host path, decode recipes included, with no launch (see ``profile_overhead.py``). Per configuration, over
``--rounds`` generates of ``--tokens`` new tokens (after one warm-up generate): collections of each generation and
the time spent in them (``gc.callbacks``), and the growth in tracked objects over one generate.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))

import profile_overhead as po  # noqa: E402
from gc_clock import GcClock  # noqa: E402


def tracked_growth(model, inputs, tokens):
    """Tracked objects alive after a generate minus before it (both after a full collection)."""
    gc.collect()
    before = len(gc.get_objects())
    generate(model, inputs, tokens)
    gc.collect()
    return len(gc.get_objects()) - before


@torch.no_grad()
def generate(model, inputs, tokens):
    model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--configs", default="vanilla,var+tstub,all+tstub")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    ap.add_argument("--label", default="", help="what code this is (written into the results)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, inputs = po.build(args.layers, 64, 4)
    sink_dims, tau = [1, 2], 2.0
    configs = [c for c in args.configs.split(",") if c]
    rows = []
    with GcClock() as clock:
        for cfg in configs:
            with po.configured(model, cfg, sink_dims, tau):
                generate(model, inputs, 4)  # warm-up
                growth = tracked_growth(model, inputs, args.tokens)
                runs = []
                for _ in range(args.rounds):
                    clock.reset()
                    t = time.perf_counter()
                    generate(model, inputs, args.tokens)
                    runs.append({"s": time.perf_counter() - t, "count": dict(clock.count),
                                 "gc_ms": {g: 1e3 * s for g, s in clock.seconds.items()}})
            full = [r["count"].get(2, 0) for r in runs]
            full_ms = [r["gc_ms"].get(2, 0.0) for r in runs]
            rows.append({"config": cfg, "tracked_growth_per_generate": growth,
                         "collections_per_generate": {g: sum(r["count"].get(g, 0) for r in runs) / len(runs)
                                                      for g in (0, 1, 2)},
                         "full_collections": sum(full), "full_collection_ms_each":
                             round(sum(full_ms) / sum(full), 1) if sum(full) else None,
                         "gc_ms_per_generate": round(sum(sum(r["gc_ms"].values()) for r in runs) / len(runs), 2),
                         "median_s": round(statistics.median(r["s"] for r in runs), 4), "runs": runs})
            print(f"{cfg:<16} growth {growth:6d}  full collections {sum(full)}/{args.rounds} generates  "
                  f"gc {rows[-1]['gc_ms_per_generate']:8.2f} ms/generate  median {rows[-1]['median_s']:.3f} s",
                  flush=True)
    gc.collect()
    meta = {"command": "python " + " ".join(sys.argv), "label": args.label,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(), "torch": torch.__version__, "tracked_objects": len(gc.get_objects()),
            "gc_thresholds": gc.get_threshold(), "machine": platform.processor() or platform.machine(),
            "rounds": args.rounds, "tokens": args.tokens, "layers": args.layers}
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump({**meta, "rows": rows}, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    if args.md:
        lines = [f"`{meta['command']}` ({meta['label']}; {meta['date']}, Python {meta['python']}, "
                 f"{meta['tracked_objects']} tracked objects)", "",
                 "| config | tracked objects kept per generate | collections per generate (gen 0 / 1 / 2) | "
                 "ms per full collection | ms in GC per generate | median s |", "|---|---|---|---|---|---|"]
        for r in rows:
            c = r["collections_per_generate"]
            each = "" if r["full_collection_ms_each"] is None else f"{r['full_collection_ms_each']:.1f}"
            lines.append(f"| {r['config']} | {r['tracked_growth_per_generate']} | {c[0]:.1f} / {c[1]:.1f} / "
                         f"{c[2]:.2f} | {each} | {r['gc_ms_per_generate']:.1f} | {r['median_s']:.3f} |")
        with open(args.md, "a") as f:
            f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
