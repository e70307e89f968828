"""Every method on the offline testbed: POPE (3 splits) and CHAIR, one table, one JSON, one chart.

    python benchmarks/testbed_methods.py                      # all method sets, defaults below
    python benchmarks/testbed_methods.py --pope-images 100 --chair-images 100 --sets baseline,var

Same model, same seeds, same questions and images for every row; only the method set changes. Writes
``benchmarks/results/testbed.json`` (a list of ``{"method", "benchmark", "metrics"}``), ``testbed.md`` (table,
command, versions, device, date) and ``docs/testbed_methods.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SETS = "baseline,var,vhr,dual_stream,carve,var+vhr,vhr+dual_stream,var+vhr+dual_stream"
POPE_KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
CHAIR_KEYS = ("chair_s", "chair_i", "recall", "precision", "f1", "len")


def run(args):
    import torch

    from vlmfix.eval.generate import Decoding
    from vlmfix.eval.methods import method_sets
    from vlmfix.eval.tasks import ModelSpec, RunOptions, run_chair, run_pope

    torch.manual_seed(0)
    sets = method_sets(config_paths=args.method_config, compare=[s for s in args.sets.split(",") if s])
    spec = ModelSpec("testbed", args.device, None, None)
    records, timings = [], {}
    out = Path(args.work)
    for label, cfgs in sets:
        opts = RunOptions(output=out / "pope", batch_size=args.batch_size, resume=True, progress=False,
                          method_sets=[(label, cfgs)])
        t0 = time.perf_counter()
        pope = run_pope(model_spec=spec, opts=opts, num_images=args.pope_images, seed=args.seed,
                        decoding=Decoding(args.pope_tokens))[label]
        t1 = time.perf_counter()
        chair = None
        if label not in args.no_chair.split(","):
            opts = RunOptions(output=out / "chair", batch_size=args.batch_size, resume=True, progress=False,
                              method_sets=[(label, cfgs)])
            chair = run_chair(model_spec=spec, opts=opts, num_images=args.chair_images, seed=args.seed,
                              decoding=Decoding(args.chair_tokens))[label]
        t2 = time.perf_counter()
        timings[label] = {"pope_s": round(t1 - t0, 1), "chair_s": round(t2 - t1, 1)}
        for split, m in pope["splits"].items():
            records.append({"method": label, "benchmark": f"pope-{split}",
                            "metrics": {k: m[k] for k in (*POPE_KEYS, "n")}})
        if chair is not None:
            records.append({"method": label, "benchmark": "chair",
                            "metrics": {k: chair["metrics"][k] for k in (*CHAIR_KEYS, "num_captions")}})
        print(f"{label}: POPE {t1 - t0:.0f}s, CHAIR {t2 - t1:.0f}s", flush=True)
    return records, timings


def table(records) -> str:
    methods = list(dict.fromkeys(r["method"] for r in records))
    get = {(r["method"], r["benchmark"]): r["metrics"] for r in records}
    head = ("| method | " + " | ".join(f"{s} acc / F1 / yes" for s in ("random", "popular", "adversarial"))
            + " | CHAIR_s | CHAIR_i | recall | len |")
    lines = [head, "|" + "---|" * (2 + 3 + 4 - 1)]
    for m in methods:
        cells = []
        for s in ("random", "popular", "adversarial"):
            x = get.get((m, f"pope-{s}"))
            cells.append("—" if x is None else f"{100 * x['accuracy']:.1f} / {100 * x['f1']:.1f} / "
                                                f"{100 * x['yes_ratio']:.0f}")
        c = get.get((m, "chair"))
        cells += ["—"] * 4 if c is None else [f"{100 * c['chair_s']:.1f}", f"{100 * c['chair_i']:.1f}",
                                               f"{100 * c['recall']:.1f}", f"{c['len']:.1f}"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(records, path: Path):
    """Grouped bars drawn with PIL (no plotting dependency): POPE F1 per split and CHAIR_i / CHAIR_s per method."""
    from PIL import Image, ImageDraw, ImageFont

    methods = list(dict.fromkeys(r["method"] for r in records))
    get = {(r["method"], r["benchmark"]): r["metrics"] for r in records}
    with_chair = [m for m in methods if (m, "chair") in get]
    panels = [("POPE F1 (%) - higher is better", methods,
               [("random", lambda m: get.get((m, "pope-random"), {}).get("f1")),
                ("popular", lambda m: get.get((m, "pope-popular"), {}).get("f1")),
                ("adversarial", lambda m: get.get((m, "pope-adversarial"), {}).get("f1"))]),
              ("CHAIR (%) - lower is better", with_chair,
               [("CHAIR_s", lambda m: get[(m, "chair")]["chair_s"]),
                ("CHAIR_i", lambda m: get[(m, "chair")]["chair_i"])])]
    colors = [(66, 133, 244), (234, 67, 53), (251, 188, 4)]
    width, panel_h, margin = 140 + 90 * len(methods), 300, 40
    img = Image.new("RGB", (width, 2 * panel_h + 40), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for p, (title, names, series) in enumerate(panels):
        top = 20 + p * panel_h
        base = top + panel_h - 70
        values = [v for v in (f(m) for m in names for _, f in series) if v is not None]
        # POPE F1s differ by points near 90 %: start that axis a little under the smallest value
        lo = max(0.0, min(values) - 0.05) if p == 0 and values else 0.0
        vmax = lo + (max(values + [lo + 1e-9]) - lo) * 1.15
        draw.text((margin, top), f"{title}  (axis from {100 * lo:.0f} %)", fill="black", font=font)
        draw.line((margin, base, width - 10, base), fill="black")
        for i, m in enumerate(names):
            x0 = margin + 20 + i * 90
            for j, (name, f) in enumerate(series):
                v = f(m)
                if v is None:  # not measured for this method (drawn as a gap)
                    continue
                h = (base - top - 30) * (v - lo) / (vmax - lo)
                xa = x0 + j * (60 // len(series))
                draw.rectangle((xa, base - h, xa + 60 // len(series) - 3, base), fill=colors[j])
                draw.text((xa, base - h - 12), f"{100 * v:.0f}", fill="black", font=font)
            draw.text((x0, base + 6), m.replace("+", "+\n"), fill="black", font=font)
        for j, (name, _) in enumerate(series):
            draw.rectangle((width - 120, top + 4 + j * 14, width - 110, top + 14 + j * 14), fill=colors[j])
            draw.text((width - 105, top + 3 + j * 14), name, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def partial_records(work: Path, label: str, first: int | None = None) -> list[dict]:
    """POPE metrics of a method set from its answered samples: every split it answered completely, or, with
    ``first``, the first ``first`` questions of each split (the questions of the first scenes: 6 per scene)."""
    from vlmfix.eval.io import read_jsonl
    from vlmfix.eval.tasks import score_pope_records

    questions = {}
    for f in sorted((work / "pope" / "questions").glob("coco_pope_*.json")):
        ids = [json.loads(line)["question_id"] for line in f.read_text().splitlines() if line.strip()]
        questions[f.stem.replace("coco_pope_", "")] = set(ids[:first] if first else ids)
    done = {}
    for shard in sorted((work / "pope" / label / "shards").glob("*.jsonl")):
        for r in read_jsonl(shard):
            done.setdefault(r["split"], {})[r["question_id"]] = r
    out = []
    for split, wanted in questions.items():
        recs = [r for qid, r in done.get(split, {}).items() if qid in wanted]
        if len(recs) == len(wanted):
            m = score_pope_records(recs, "official")["splits"][split]
            out.append({"method": label, "benchmark": f"pope-{split}", "metrics": {k: m[k] for k in (*POPE_KEYS, "n")}})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=DEFAULT_SETS, help="comma-separated method sets, '+' joins methods")
    ap.add_argument("--pope-images", type=int, default=500)
    ap.add_argument("--chair-images", type=int, default=500)
    ap.add_argument("--pope-tokens", type=int, default=16)
    ap.add_argument("--chair-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method-config", action="append", default=[],
                    help="JSON config replacing a method's defaults (e.g. CARVE's answer suffix), repeatable")
    ap.add_argument("--no-chair", default="carve",
                    help="method sets evaluated on POPE only (CARVE answers questions; it does not caption)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", default="runs/testbed_methods", help="per-sample outputs (resumable)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--chart", default=str(ROOT / "docs" / "testbed_methods.png"))
    ap.add_argument("--partial", default="", help="method sets taken from an interrupted run: only their fully "
                                                   "answered POPE splits are reported")
    ap.add_argument("--subset-questions", type=int, default=0,
                    help="also score every method set on the first N questions of each split (N/6 scenes): the "
                         "comparable table for method sets that were only run on that subset")
    args = ap.parse_args(argv)
    records, timings = run(args)
    partial = [x for x in args.partial.split(",") if x]
    subset_note = f"first {args.subset_questions // 6} of the {args.pope_images} scenes" if args.subset_questions else ""
    for label in partial:
        full = partial_records(Path(args.work), label)
        records += full
        if args.subset_questions and len(full) < 3:
            records += [{**r, "subset": subset_note}
                        for r in partial_records(Path(args.work), label, first=args.subset_questions)]
    subset = []
    if args.subset_questions:
        for label in dict.fromkeys([r["method"] for r in records] + partial):
            subset += partial_records(Path(args.work), label, first=args.subset_questions)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "testbed.json").write_text(json.dumps(records, indent=1) + "\n")
    import torch
    import transformers

    import vlmfix

    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else (
        f"CPU ({platform.processor() or platform.machine()})")
    md = ["# Methods on the testbed\n", f"command: `python benchmarks/testbed_methods.py {' '.join(sys.argv[1:])}`  ",
          f"vlmfix {vlmfix.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"device {device}, date {datetime.date.today().isoformat()}  ",
          f"POPE: {args.pope_images} held-out scenes x 3 splits (official parser, {args.pope_tokens} new tokens); "
          f"CHAIR: {args.chair_images} scenes, 'Please describe this image in detail.', {args.chair_tokens} new "
          f"tokens; greedy, seed {args.seed}.\n", table([r for r in records if "subset" not in r]), "",
          "seconds per method set: " + json.dumps(timings)]
    if subset:
        md += ["", f"## POPE on the {subset_note} ({args.subset_questions} questions per split), every method set\n",
               table(subset)]
    (out / "testbed.md").write_text("\n".join(md) + "\n")
    chart([{**r, "method": f"{r['method']}*"} if "subset" in r else r for r in records],  # *: subset
          Path(args.chart))
    print(table([r for r in records if "subset" not in r]))
    if subset:
        print(table(subset))


if __name__ == "__main__":
    main()
