"""Language side of the world: reference captions, detailed descriptions and yes/no object questions.

Wording varies (synonyms, plurals, several templates) so that the evaluator's synonym handling is exercised and the
decoder cannot win by memorising one sentence per scene. Descriptions list objects largest first and close with a
sentence about the setting; the objects that come late are small and uncertain, which is where a decoder leans on
what usually co-occurs.
"""

from __future__ import annotations

import numpy as np

from .categories import BY_ID, SYNONYMS, THEMES
from .scene import IMAGE_SIZE, Scene

DETAIL_PROMPT = "Please describe this image in detail."
CAPTION_PROMPTS = ("Provide a one-sentence caption for the provided image.", "Describe this image briefly.")
QUESTION = "Is there a {} in the image?"
NUMBERS = {2: "two", 3: "three", 4: "four"}
PREP = {"kitchen": "on", "street": "on", "park": "in", "office": "on"}

SETTING = {
    "kitchen": ("The background is a tiled kitchen wall.", "Pale tiles cover the wall behind the counter."),
    "street": ("The road is grey asphalt with a painted lane.", "The street surface is dark asphalt."),
    "park": ("Green grass stretches under a blue sky.", "The sky is clear above the lawn."),
    "office": ("Everything rests on a wooden desk.", "The desk has a brown wood grain."),
}


def article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def name_of(cid: int, count: int, rng: np.random.Generator | None, p_syn: float = 0.3) -> str:
    """Surface form of ``count`` instances of category ``cid`` ("a mug", "two forks")."""
    forms = SYNONYMS[BY_ID[cid].name]
    sing, plur = forms[0]
    if rng is not None and len(forms) > 1 and rng.random() < p_syn:
        sing, plur = forms[1 + int(rng.integers(len(forms) - 1))]
    return article(sing) if count == 1 else f"{NUMBERS.get(count, 'several')} {plur}"


def _counts(scene: Scene) -> list[tuple[int, int]]:
    """(category, count) in order of first (largest) appearance."""
    seen: dict[int, int] = {}
    for o in scene.objects:
        seen[o.category_id] = seen.get(o.category_id, 0) + 1
    return list(seen.items())


def join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def position(bbox) -> str:
    x, y, w, h = bbox
    cx, cy = (x + w / 2) / IMAGE_SIZE, (y + h / 2) / IMAGE_SIZE
    col = "left" if cx < 0.36 else "right" if cx > 0.64 else ""
    row = "top" if cy < 0.36 else "bottom" if cy > 0.64 else ""
    if row and col:
        return f"in the {row} {col}"
    if row:
        return f"at the {row}"
    if col:
        return f"on the {col}"
    return "in the center"


def captions(scene: Scene, rng: np.random.Generator, n: int = 5) -> list[str]:
    """``n`` distinct-template reference captions mentioning every object category."""
    place = THEMES[scene.theme]["place"]
    items = _counts(scene)
    templates = [
        lambda L: f"A {place} with {L}.",
        lambda L: f"{L[0].upper() + L[1:]} {PREP[scene.theme]} a {place}.",
        lambda L: f"There {'is' if L.startswith('a') else 'are'} {L} in this picture of a {place}.",
        lambda L: f"A photo showing {L}.",
        lambda L: f"A view of a {place} that has {L}.",
        lambda L: f"This {place} holds {L}.",
    ]
    order = rng.permutation(len(templates))[:n]
    out = []
    for t in order:
        shuffled = [items[i] for i in rng.permutation(len(items))]
        out.append(templates[t](join([name_of(c, k, rng) for c, k in shuffled])))
    return out


def detailed_description(scene: Scene, rng: np.random.Generator) -> str:
    """A multi-sentence description: setting, one sentence per category (largest first), background."""
    place = THEMES[scene.theme]["place"]
    first = {}
    for o in scene.objects:
        first.setdefault(o.category_id, o.bbox)
    opener = ("This image shows a {}.", "The picture shows a {}.")[int(rng.integers(2))].format(place)
    sents = [opener]
    for i, (cid, k) in enumerate(_counts(scene)):
        noun = name_of(cid, k, rng, p_syn=0.15)
        where = position(first[cid])
        verb = "is" if k == 1 else "are"
        if i == 0:
            sents.append(f"There {verb} {noun} {where}.")
        else:
            lead = ("There {} also {}", "Nearby there {} {}", "There {} {}")[int(rng.integers(3))]
            sents.append(lead.format(verb, noun) + f" {where}.")
    sents.append(SETTING[scene.theme][int(rng.integers(2))])
    return " ".join(sents)
