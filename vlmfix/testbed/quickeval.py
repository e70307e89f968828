"""Self-contained POPE / CHAIR-style scoring used while training the testbed model.

The training run has to judge its own checkpoints on a machine with nothing but the repository, so this module does
not depend on ``vlmfix.eval``. It follows the published protocols closely: POPE questions "Is there a {obj} in the
image?" with random / popular / adversarial negatives and the usual answer parsing (first sentence, commas dropped,
"no"/"not" means no); CHAIR counts object mentions through the world's synonym table.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import torch

from .categories import BY_ID, BY_NAME, CATEGORIES, synonyms_table
from .model import IMAGE_TOKEN, NUM_IMAGE_TOKENS, prompt_text
from .text import DETAIL_PROMPT, QUESTION

SETTINGS = ("random", "popular", "adversarial")


def pope_questions(present: list[list[int]], setting: str, seed: int = 0, per_image: int = 3):
    """(image index, category name, label) triples: up to ``per_image`` positives and as many negatives."""
    rng = np.random.default_rng([seed, SETTINGS.index(setting)])
    freq = Counter(c for p in present for c in p)
    co: dict[int, Counter] = {c.id: Counter() for c in CATEGORIES}
    for p in present:
        for a in p:
            for b in p:
                if a != b:
                    co[a][b] += 1
    all_ids = sorted(BY_ID)
    popular = sorted(all_ids, key=lambda c: (-freq[c], c))
    out = []
    for i, p in enumerate(present):
        pos = [p[j] for j in rng.permutation(len(p))[:per_image]]
        absent = [c for c in all_ids if c not in p]
        if setting == "random":
            neg = [absent[j] for j in rng.permutation(len(absent))[:len(pos)]]
        elif setting == "popular":
            neg = [c for c in popular if c not in p][:len(pos)]
        else:
            score = Counter()
            for a in p:
                score.update(co[a])
            neg = sorted(absent, key=lambda c: (-score[c], -freq[c], c))[:len(pos)]
        out += [(i, BY_ID[c].name, 1) for c in pos] + [(i, BY_ID[c].name, 0) for c in neg]
    return out


def parse_yes_no(text: str) -> int:
    """POPE's parser: look at the first sentence only; any 'no' / 'not' word makes it a no."""
    first = text.split(".")[0].replace(",", "")
    words = first.split()
    return 0 if any(w in ("No", "not", "no") for w in words) else 1


def pope_metrics(pred: list[int], labels: list[int]) -> dict:
    p, y = np.asarray(pred), np.asarray(labels)
    tp, fp = int(((p == 1) & (y == 1)).sum()), int(((p == 1) & (y == 0)).sum())
    fn, tn = int(((p == 0) & (y == 1)).sum()), int(((p == 0) & (y == 0)).sum())
    prec = tp / max(tp + fp, 1)
    rec = tp / max(tp + fn, 1)
    return {"accuracy": 100 * (tp + tn) / len(y), "precision": 100 * prec, "recall": 100 * rec,
            "f1": 100 * 2 * prec * rec / max(prec + rec, 1e-9), "yes_ratio": 100 * p.mean(), "n": len(y)}


class Mentions:
    """Find category mentions in free text via the synonym table (longest phrase first, whole words)."""

    def __init__(self):
        pairs = [(w, BY_NAME[name].id) for name, words in synonyms_table().items() for w in words]
        pairs.sort(key=lambda x: -len(x[0]))
        self.lookup = dict(pairs)
        self.pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w, _ in pairs) + r")\b")

    def __call__(self, text: str) -> list[int]:
        return [self.lookup[m] for m in self.pattern.findall(text.lower())]


def chair_metrics(captions: list[str], present: list[list[int]]) -> dict:
    """CHAIR_s / CHAIR_i (unique objects per caption), object recall, mean length in words, top hallucinations."""
    find = Mentions()
    n_ment = n_hall = n_bad_caps = covered = total_gt = 0
    halluc = Counter()
    for cap, gt in zip(captions, present):
        said = set(find(cap))
        bad = said - set(gt)
        n_ment += len(said)
        n_hall += len(bad)
        n_bad_caps += bool(bad)
        covered += len(said & set(gt))
        total_gt += len(gt)
        halluc.update(BY_ID[c].name for c in bad)
    return {"chair_s": 100 * n_bad_caps / len(captions), "chair_i": 100 * n_hall / max(n_ment, 1),
            "recall": 100 * covered / max(total_gt, 1),
            "len": float(np.mean([len(c.split()) for c in captions])),
            "top_hallucinations": halluc.most_common(10)}


def hallucination_context(captions, present, themes) -> dict:
    """How often hallucinated objects are the partner of a present object, or belong to the scene's theme."""
    find = Mentions()
    n = partner = theme = 0
    for cap, gt, th in zip(captions, present, themes):
        partners = {BY_ID[c].partner for c in gt}
        for c in set(find(cap)) - set(gt):
            n += 1
            partner += c in partners
            theme += BY_ID[c].theme == th
    return {"n": n, "partner_of_present_pct": 100 * partner / max(n, 1), "same_theme_pct": 100 * theme / max(n, 1)}


# ------------------------------------------------------------------------------------------------- model running

def _encode(tokenizer, prompts, device):
    expanded = [prompt_text(p).replace(IMAGE_TOKEN, IMAGE_TOKEN * NUM_IMAGE_TOKENS) for p in prompts]
    enc = tokenizer(expanded, return_tensors="pt", padding=True, padding_side="left")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


@torch.no_grad()
def generate(model, tokenizer, pixel_values, image_index, prompts, max_new_tokens, batch=256, dtype=None):
    """Greedy answers for (image, prompt) pairs; ``pixel_values`` holds every image once."""
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(prompts), batch):
        ids, mask = _encode(tokenizer, prompts[s:s + batch], device)
        pix = pixel_values[torch.as_tensor(image_index[s:s + batch])].to(device)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=device.type == "cuda"):
            gen = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pix, do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=0, eos_token_id=2)
        out += tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
    return [o.strip() for o in out]


def evaluate(model, tokenizer, pixel_values, present, themes, n_chair=None, batch=256, max_new_tokens=96) -> dict:
    """POPE (three settings) and CHAIR on detailed descriptions for the given held-out images."""
    res = {"pope": {}}
    for setting in SETTINGS:
        qs = pope_questions(present, setting)
        answers = generate(model, tokenizer, pixel_values, [q[0] for q in qs],
                           [QUESTION.format(q[1]) for q in qs], max_new_tokens=4, batch=batch * 2)
        res["pope"][setting] = pope_metrics([parse_yes_no(a) for a in answers], [q[2] for q in qs])
    n = len(present) if n_chair is None else n_chair
    caps = generate(model, tokenizer, pixel_values, list(range(n)), [DETAIL_PROMPT] * n,
                    max_new_tokens=max_new_tokens, batch=batch)
    res["chair"] = chair_metrics(caps, present[:n])
    res["chair"]["context"] = hallucination_context(caps, present[:n], themes[:n])
    res["samples"] = caps[:5]
    return res


def meets_spec(res: dict, margin: float = 0.0) -> bool:
    """The testbed's acceptance bar for realistic hallucination (not a target for any mitigation).

    ``margin`` tightens the two bars that sit near their limits (adversarial F1 gap >= 5 points, random accuracy
    <= 95 %) so that a checkpoint picked with this quick scorer still meets them under the full ``vlmfix eval``
    protocol, whose question sample differs (the two were seen to disagree by ~0.7 F1 points on the gap).
    """
    p = res["pope"]
    return (p["random"]["f1"] - p["adversarial"]["f1"] >= 5 + margin and res["chair"]["chair_i"] >= 5
            and 75 <= p["random"]["accuracy"] <= 95 - margin / 2)


def evaluate_world(n_images: int = 500, root=None, device="cpu", model=None, processor=None) -> dict:
    """Score a model (default: the shipped one) on the cached held-out world through the public processor path."""
    from PIL import Image

    from .model import load_model
    from .world import default_eval_world, load_scenes

    if model is None:
        model, processor = load_model(device=device)
    world = default_eval_world(root, n_images=n_images)
    rows = load_scenes(world)[:n_images]
    imgs = [Image.open(world / "images" / im["file_name"]).convert("RGB") for im, _, _ in rows]
    pix = processor.image_processor(imgs, return_tensors="pt")["pixel_values"]
    res = evaluate(model, processor.tokenizer, pix, [p for _, p, _ in rows], [t for _, _, t in rows], batch=64)
    return res
