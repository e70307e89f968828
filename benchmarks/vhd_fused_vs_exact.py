"""How close VHR's fused VHD (no extra pass) comes to the exact VHD (the paper's extra image-free pass).

    python benchmarks/vhd_fused_vs_exact.py [--scenes 48] [--out benchmarks/results]

VHD scores each head of a VHR layer by how much the image changes its output at the last prompt position.

* ``exact`` (the paper's Alg. 1): the prompt with the image against its image-free twin (the image tokens removed),
  run as extra batch rows through every layer, so the twin's states differ from the first layer on.
* ``fused``: in the one pass that runs anyway, the head's output against the same head attending to the non-visual
  keys only (the VISUAL classes removed by a ``-inf`` log bias) at the last query row. The states feeding the layer
  are those *with* the image, which is the approximation.

Both modes reinforce the heads they choose before the next layer is scored, as the paper does.

Models: the shipped testbed LLaVA (trained; 8 layers x 8 heads) on held-out scenes, with POPE questions and the
detailed-description prompt; and the tiny random-weight models of all seven supported families (the ones the tests
use), on several prompts each. Per (prompt, VHR layer): Spearman rank correlation and Pearson r of the head scores,
relative L2 error ``||fused - exact|| / ||exact||``, and agreement of the chosen heads (Jaccard index of the two
sets and the share of heads classified the same). Writes ``vhd_fused_vs_exact.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import vlmfix  # noqa: E402


def _runtime(model, kind):
    return next(rt for rt in vlmfix.get_patch(model).session.runtimes if type(rt).__name__ == kind)


@torch.no_grad()
def vhd_by_mode(model, inputs) -> dict:
    """mode -> (layer -> VHD (B, H) fp64, layer -> chosen heads (B, H) bool) after one patched forward."""
    out = {}
    for mode in ("exact", "fused"):
        with vlmfix.patched(model, vlmfix.VHR(mode=mode)):
            model(**inputs)
            rt = _runtime(model, "VhrRuntime")
            out[mode] = ({layer: v.double().cpu() for layer, v in rt.vhd.items()},
                         {layer: h.bool().cpu() for layer, h in rt.heads.items()})
    return out


def _rank(x: torch.Tensor) -> torch.Tensor:
    return torch.argsort(torch.argsort(x)).double()


def _corr(a: torch.Tensor, b: torch.Tensor) -> float | None:
    a, b = a - a.mean(), b - b.mean()
    den = (a.norm() * b.norm()).item()
    return None if den == 0 else (a @ b).item() / den


def compare(pair: dict) -> list[dict]:
    """One row per (batch row, layer)."""
    (vhd_e, heads_e), (vhd_f, heads_f) = pair["exact"], pair["fused"]
    rows = []
    for layer in sorted(vhd_e):
        for b in range(vhd_e[layer].shape[0]):
            e, f = vhd_e[layer][b], vhd_f[layer][b]
            he, hf = heads_e[layer][b], heads_f[layer][b]
            union = (he | hf).sum().item()
            rows.append({"layer": layer, "spearman": _corr(_rank(e), _rank(f)), "pearson": _corr(e, f),
                         "rel_l2": (f - e).norm().item() / max(e.norm().item(), 1e-300),
                         "jaccard": (he & hf).sum().item() / union if union else 1.0,
                         "same_class": (he == hf).double().mean().item()})
    return rows


def summarise(name: str, rows: list[dict], prompts: int, heads: int) -> dict:
    def agg(key):
        vals = [r[key] for r in rows if r[key] is not None]
        return {"mean": round(statistics.fmean(vals), 4), "median": round(statistics.median(vals), 4),
                "min": round(min(vals), 4), "n": len(vals)} if vals else None

    layers = sorted({r["layer"] for r in rows})
    per_layer = {}
    for layer in layers:
        sub = [r for r in rows if r["layer"] == layer]
        per_layer[layer] = {k: round(statistics.fmean([r[k] for r in sub if r[k] is not None]), 4)
                            for k in ("spearman", "same_class")}
    return {"model": name, "prompts": prompts, "heads_per_layer": heads, "vhr_layers": layers,
            **{k: agg(k) for k in ("spearman", "pearson", "rel_l2", "jaccard", "same_class")},
            "per_layer": per_layer}


def testbed(scenes: int) -> dict:
    from PIL import Image

    from vlmfix.testbed import default_eval_world, load_model
    from vlmfix.testbed.categories import coco_categories

    model, processor = load_model()
    root = default_eval_world()
    paths = sorted((root / "images").iterdir())[:scenes]
    names = [c["name"] for c in coco_categories()]
    g = torch.Generator().manual_seed(0)
    texts = ["Please describe this image in detail."] + [f"Is there a {names[i]} in the image?"
                                                         for i in torch.randint(len(names), (3,), generator=g)]
    rows = []
    for text in texts:
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
            add_generation_prompt=True, tokenize=False)
        for i in range(0, len(paths), 16):
            images = [Image.open(p).convert("RGB") for p in paths[i:i + 16]]
            inputs = processor(images=images, text=[prompt] * len(images), return_tensors="pt", padding=True)
            rows += compare(vhd_by_mode(model, dict(inputs)))
    heads = model.config.text_config.num_attention_heads
    return summarise("testbed LLaVA (trained)", rows, len(paths) * len(texts), heads)


def tiny_families(seeds: int) -> list[dict]:
    from families import BUILDERS

    out = []
    for family, build in BUILDERS.items():
        t = build()
        rows = []
        for seed in range(seeds):
            inputs = t.inputs(((3, 4), (1, 6), (5, 2)), seed=seed)
            rows += compare(vhd_by_mode(t.model, inputs))
        heads = t.model.config.get_text_config().num_attention_heads
        out.append(summarise(f"tiny {family} (random weights)", rows, 3 * seeds, heads))
    return out


def markdown(results: list[dict], meta: dict) -> str:
    lines = ["# VHR: fused VHD against the exact VHD", "",
             f"- command: `{meta['command']}`", f"- torch {meta['torch']}, transformers {meta['transformers']}, "
             f"{meta['date']}, CPU",
             "- per (prompt, VHR layer): Spearman / Pearson correlation of the head scores, relative L2 error, and "
             "agreement of the chosen heads (Jaccard of the two sets, share of heads classified the same); mean "
             "(min) over prompts and layers", "",
             "| model | prompts | heads/layer | VHR layers | Spearman | Pearson | rel. L2 error | Jaccard | "
             "same class |", "|---|---|---|---|---|---|---|---|---|"]

    def cell(s):
        if s is None:
            return "—"
        return f"{s['mean']:.2f} ({s['min']:.2f})"

    for r in results:
        lines.append(f"| {r['model']} | {r['prompts']} | {r['heads_per_layer']} | {r['vhr_layers']} | "
                     f"{cell(r['spearman'])} | {cell(r['pearson'])} | {r['rel_l2']['mean']:.2f} | "
                     f"{cell(r['jaccard'])} | {cell(r['same_class'])} |")
    lines += ["", "Per VHR layer (mean Spearman / share of heads classified the same):", ""]
    for r in results:
        lines.append(f"- {r['model']}: " + ", ".join(f"layer {layer} {v['spearman']:.2f} / {v['same_class']:.2f}"
                                                     for layer, v in r["per_layer"].items()))
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=48)
    ap.add_argument("--seeds", type=int, default=4, help="prompt batches per tiny family")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    import transformers

    results = [testbed(args.scenes)] + tiny_families(args.seeds)
    meta = {"command": "python " + " ".join(sys.argv), "torch": torch.__version__,
            "transformers": transformers.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "vhd_fused_vs_exact.json"), "w") as fh:
        json.dump({"meta": meta, "results": results}, fh, indent=1)
    text = markdown(results, meta)
    with open(os.path.join(args.out, "vhd_fused_vs_exact.md"), "w") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
