"""POPE: question sets built the way the official repository builds them, answer parsers, and metrics.

Construction (RUCAIBox/POPE ``main.py``/``utils.py``), reproduced rule by rule:

* images with at least ``sample_num`` (3) distinct objects; ``num_images`` (500) of them drawn with ``random.sample``
  (the official script sets no seed; we seed a private ``random.Random`` so a set can be rebuilt);
* per image and for i in 0..2: the i-th listed object is a positive ("yes"), then one negative ("no"), so labels
  alternate y,n,y,n,y,n and the three splits share images and positives;
* negatives come from the objects present in the *selected* images, never from the image's own objects nor from objects
  already asked about for this image: ``random`` draws uniformly until valid (the fixed, 3000-question behaviour),
  ``popular`` takes the most frequent valid object, ``adversarial`` the valid object co-occurring most often with the
  current positive (falling back to a random valid one);
* "Is there a {} in the image?" with "an" before a vowel (the fixed article rule, without the old "imange" typo).

Decisions where the official code leaves things open: candidate images are taken in ascending image id; an image's
objects are its distinct category names in order of first annotation (ascending annotation id); ties in frequency or
co-occurrence keep first-seen order (Python's stable sort, as in the official code); every split draws from its own
``Random(seed)`` so building one split or all gives the same questions.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from .errors import EvalInputError

SPLITS = ("random", "popular", "adversarial")
TEMPLATE = "Is there a {} in the image?"


# --------------------------------------------------------------------------------------------------- construction

def image_objects(coco) -> list[dict]:
    """``[{"image_id", "image", "objects"}]`` for every image of a pycocotools index, objects in annotation order."""
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    per_image: dict[int, list[str]] = defaultdict(list)
    for ann in sorted(coco.dataset["annotations"], key=lambda a: (a.get("id", 0))):
        objs = per_image[ann["image_id"]]
        name = names[ann["category_id"]]
        if name not in objs:
            objs.append(name)
    out = []
    for img in sorted(coco.dataset["images"], key=lambda im: im["id"]):
        out.append({"image_id": img["id"], "image": img.get("file_name", str(img["id"])),
                    "objects": per_image.get(img["id"], [])})
    return out


def select_images(images: list[dict], num_images: int, seed: int, sample_num: int = 3) -> list[dict]:
    """The seeded draw of ``num_images`` images having at least ``sample_num`` objects (all of them if fewer)."""
    eligible = [im for im in images if len(im["objects"]) >= sample_num]
    if not eligible:
        raise EvalInputError(f"no image has at least {sample_num} annotated objects; POPE needs such images")
    n = min(num_images, len(eligible))
    return random.Random(seed).sample(eligible, n)


def object_frequencies(selected: list[dict]) -> dict[str, int]:
    """Images per object over the selected images, in first-seen order (the negative pool of every split)."""
    freq: dict[str, int] = {}
    for im in selected:
        for obj in im["objects"]:
            freq[obj] = freq.get(obj, 0) + 1
    return freq


def co_occurrence(selected: list[dict]) -> dict[str, dict[str, int]]:
    """Pairwise counts of two objects appearing in the same selected image."""
    co: dict[str, dict[str, int]] = defaultdict(dict)
    for im in selected:
        for a in im["objects"]:
            for b in im["objects"]:
                if a != b:
                    co[a][b] = co[a].get(b, 0) + 1
    return co


def make_question(obj: str, template: str = TEMPLATE) -> str:
    """The template filled with ``obj``, "a" turned into "an" before a vowel (only the article is changed)."""
    if obj[:1].lower() in "aeiou":
        template = template.replace(" a {}", " an {}", 1)
        if template.startswith("a {}"):
            template = "an {}" + template[4:]
    return template.format(obj)


def build_split(selected: list[dict], split: str, seed: int, sample_num: int = 3,
                template: str = TEMPLATE) -> list[dict]:
    """One POPE split as question records ``{question_id, image, text, label, object}``."""
    if split not in SPLITS:
        raise EvalInputError(f"unknown POPE split {split!r}; expected one of {list(SPLITS)} or 'all'")
    rng = random.Random(f"pope-{split}-{seed}")
    freq = object_frequencies(selected)
    pool = list(freq)
    popular = [o for o, _ in sorted(freq.items(), key=lambda kv: kv[1], reverse=True)]
    co = co_occurrence(selected) if split == "adversarial" else {}
    out = []
    for im in selected:
        present = set(im["objects"])
        history: list[str] = []
        if len(pool) - len(present) < sample_num:
            raise EvalInputError(f"image {im['image']} leaves fewer than {sample_num} absent objects in the pool; "
                                 "POPE needs more object categories")
        for i in range(sample_num):
            pos = im["objects"][i]
            history.append(pos)
            out.append({"image": im["image"], "text": make_question(pos, template), "label": "yes", "object": pos})

            def valid(o):
                return o not in present and o not in history

            neg = None
            if split == "random":
                neg = rng.choice(pool)
                while not valid(neg):
                    neg = rng.choice(pool)
            elif split == "popular":
                neg = next((o for o in popular if valid(o)), None)
            else:
                ranked = [o for o, _ in sorted(co.get(pos, {}).items(), key=lambda kv: kv[1], reverse=True)]
                neg = next((o for o in ranked if valid(o)), None)
                if neg is None:
                    neg = rng.choice([o for o in pool if valid(o)])
            history.append(neg)
            out.append({"image": im["image"], "text": make_question(neg, template), "label": "no", "object": neg})
    for qid, rec in enumerate(out, start=1):
        rec["question_id"] = qid
    return [{"question_id": r["question_id"], "image": r["image"], "text": r["text"], "label": r["label"],
             "object": r["object"]} for r in out]


def build_pope(coco, splits=SPLITS, num_images: int = 500, seed: int = 0, sample_num: int = 3,
               template: str = TEMPLATE) -> dict[str, list[dict]]:
    """All requested splits over one seeded image selection (same images and positives in every split)."""
    selected = select_images(image_objects(coco), num_images, seed, sample_num)
    return {s: build_split(selected, s, seed, sample_num, template) for s in splits}


# --------------------------------------------------------------------------------------------------- question files

QUESTION_KEYS = ("question_id", "image", "text", "label")


def validate_questions(records: list[dict], source: str) -> list[dict]:
    """Checks the official keys and labels; question ids must be unique within a file."""
    seen = set()
    for i, r in enumerate(records):
        missing = [k for k in QUESTION_KEYS if k not in r]
        if missing:
            raise EvalInputError(f"{source}: question {i + 1} lacks {missing}; expected JSON lines with keys "
                                 f"{list(QUESTION_KEYS)}")
        if str(r["label"]).lower() not in ("yes", "no"):
            raise EvalInputError(f"{source}: question {r['question_id']} has label {r['label']!r}; expected yes/no")
        if r["question_id"] in seen:
            raise EvalInputError(f"{source}: duplicate question_id {r['question_id']}")
        seen.add(r["question_id"])
    return records


def split_name(path) -> str:
    """The split a question file belongs to, from its name (``coco_pope_popular.json`` → ``popular``)."""
    from pathlib import Path

    stem = Path(path).stem.lower()
    for s in SPLITS:
        if s in stem:
            return s
    return Path(path).stem


# --------------------------------------------------------------------------------------------------- parsing

def parse_official(text: str) -> str:
    """POPE ``evaluate.py`` (also LLaVA ``eval_pope.py``): first sentence, commas dropped, split on single spaces;
    "No", "not" or "no" as a word → no, anything else (including empty or "NO") → yes. Case-sensitive on purpose."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def parse_opera(text: str) -> str:
    """OPERA/PAI: "." and "," removed from the whole answer; no iff a word is No/not/no/NO or ends with "n't"."""
    words = text.replace(".", "").replace(",", "").split(" ")
    if any(w in ("No", "not", "no", "NO") for w in words) or any(w.endswith("n't") for w in words):
        return "no"
    return "yes"


def parse_strict(text: str) -> str:
    """First word, case-folded and stripped of punctuation, must be yes or no; anything else is "unknown"."""
    words = text.strip().split()
    first = words[0].strip(".,!?;:\"'()[]*").lower() if words else ""
    return first if first in ("yes", "no") else "unknown"


PARSERS = {"official": parse_official, "opera": parse_opera, "strict": parse_strict}


def get_parser(name: str):
    if name not in PARSERS:
        raise EvalInputError(f"unknown POPE parser {name!r}; expected one of {sorted(PARSERS)}")
    return PARSERS[name]


# --------------------------------------------------------------------------------------------------- metrics

@dataclass
class PopeCounts:
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    unknown: int = 0
    yes: int = 0
    n: int = 0

    def add(self, pred: str, label: str):
        label = label.lower()
        self.n += 1
        if pred == "yes":
            self.yes += 1
            if label == "yes":
                self.tp += 1
            else:
                self.fp += 1
        elif pred == "no":
            if label == "no":
                self.tn += 1
            else:
                self.fn += 1
        else:
            # An unparsable answer is never right; on a yes-question it is a missed positive.
            self.unknown += 1
            if label == "yes":
                self.fn += 1

    def metrics(self) -> dict:
        """Official formulas (positive = yes); a zero denominator gives 0.0 where the official script would crash."""
        def div(a, b):
            return a / b if b else 0.0

        precision = div(self.tp, self.tp + self.fp)
        recall = div(self.tp, self.tp + self.fn)
        return {
            "accuracy": div(self.tp + self.tn, self.n),
            "precision": precision,
            "recall": recall,
            "f1": div(2 * precision * recall, precision + recall),
            "yes_ratio": div(self.yes, self.n),
            "unknown_ratio": div(self.unknown, self.n),
            "tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn,
            "unknown": self.unknown, "n": self.n,
        }


def score(answers: list[str], labels: list[str], parser: str = "official") -> dict:
    """Metrics of raw answers against yes/no labels under one parser."""
    parse = get_parser(parser)
    counts = PopeCounts()
    for a, lab in zip(answers, labels, strict=True):
        counts.add(parse(a), lab)
    return counts.metrics()


def summarize(per_split: dict[str, dict]) -> dict:
    """Mean of the per-split rates (how LLaVA-1.5 and most papers report one POPE number)."""
    keys = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    if not per_split:
        return {}
    return {k: sum(m[k] for m in per_split.values()) / len(per_split) for k in keys}
