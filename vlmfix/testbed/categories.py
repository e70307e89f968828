"""Object categories, themes and partner pairs of the synthetic world.

Names and ids are COCO's so that CHAIR synonym handling, POPE question wording and any COCO tooling apply to the
testbed unchanged. Each theme holds four partner pairs: the pair structure is what gives the world a controllable
co-occurrence prior (P(partner | object)), which is the prior a language decoder learns and then over-applies.
"""

from __future__ import annotations

from dataclasses import dataclass

# theme -> (place phrase used in text, four partner pairs of COCO (id, name))
THEMES: dict[str, dict] = {
    "kitchen": {
        "place": "kitchen counter",
        "pairs": [((48, "fork"), (49, "knife")), ((47, "cup"), (50, "spoon")),
                  ((51, "bowl"), (52, "banana")), ((44, "bottle"), (46, "wine glass"))],
    },
    "street": {
        "place": "city street",
        "pairs": [((3, "car"), (10, "traffic light")), ((6, "bus"), (13, "stop sign")),
                  ((2, "bicycle"), (4, "motorcycle")), ((8, "truck"), (11, "fire hydrant"))],
    },
    "park": {
        "place": "park",
        "pairs": [((18, "dog"), (34, "frisbee")), ((38, "kite"), (16, "bird")),
                  ((15, "bench"), (28, "umbrella")), ((37, "sports ball"), (17, "cat"))],
    },
    "office": {
        "place": "office desk",
        "pairs": [((73, "laptop"), (74, "mouse")), ((76, "keyboard"), (85, "clock")),
                  ((84, "book"), (62, "chair")), ((77, "cell phone"), (64, "potted plant"))],
    },
}

SUPERCATEGORY = {
    "fork": "kitchen", "knife": "kitchen", "cup": "kitchen", "spoon": "kitchen", "bowl": "kitchen",
    "banana": "food", "bottle": "kitchen", "wine glass": "kitchen",
    "car": "vehicle", "traffic light": "outdoor", "bus": "vehicle", "stop sign": "outdoor", "bicycle": "vehicle",
    "motorcycle": "vehicle", "truck": "vehicle", "fire hydrant": "outdoor",
    "dog": "animal", "frisbee": "sports", "kite": "sports", "bird": "animal", "bench": "outdoor",
    "umbrella": "accessory", "sports ball": "sports", "cat": "animal",
    "laptop": "electronic", "mouse": "electronic", "keyboard": "electronic", "clock": "indoor", "book": "indoor",
    "chair": "furniture", "cell phone": "electronic", "potted plant": "furniture",
}

# Words a caption may use for a category (singular, plural). The first entry is the canonical name.
SYNONYMS: dict[str, list[tuple[str, str]]] = {
    "fork": [("fork", "forks")], "knife": [("knife", "knives")],
    "cup": [("cup", "cups"), ("mug", "mugs"), ("coffee cup", "coffee cups")],
    "spoon": [("spoon", "spoons"), ("teaspoon", "teaspoons")],
    "bowl": [("bowl", "bowls"), ("dish", "dishes")], "banana": [("banana", "bananas")],
    "bottle": [("bottle", "bottles")], "wine glass": [("wine glass", "wine glasses"), ("glass", "glasses")],
    "car": [("car", "cars"), ("automobile", "automobiles"), ("sedan", "sedans")],
    "traffic light": [("traffic light", "traffic lights"), ("traffic signal", "traffic signals")],
    "bus": [("bus", "buses")], "stop sign": [("stop sign", "stop signs")],
    "bicycle": [("bicycle", "bicycles"), ("bike", "bikes")],
    "motorcycle": [("motorcycle", "motorcycles"), ("motorbike", "motorbikes")],
    "truck": [("truck", "trucks"), ("lorry", "lorries")], "fire hydrant": [("fire hydrant", "fire hydrants"),
                                                                          ("hydrant", "hydrants")],
    "dog": [("dog", "dogs"), ("puppy", "puppies")], "frisbee": [("frisbee", "frisbees")],
    "kite": [("kite", "kites")], "bird": [("bird", "birds"), ("pigeon", "pigeons")],
    "bench": [("bench", "benches")], "umbrella": [("umbrella", "umbrellas")],
    "sports ball": [("ball", "balls"), ("soccer ball", "soccer balls")],
    "cat": [("cat", "cats"), ("kitten", "kittens")],
    "laptop": [("laptop", "laptops"), ("notebook computer", "notebook computers")],
    "mouse": [("mouse", "mice"), ("computer mouse", "computer mice")],
    "keyboard": [("keyboard", "keyboards")], "clock": [("clock", "clocks")], "book": [("book", "books")],
    "chair": [("chair", "chairs")], "cell phone": [("cell phone", "cell phones"), ("phone", "phones"),
                                                   ("smartphone", "smartphones")],
    "potted plant": [("potted plant", "potted plants"), ("houseplant", "houseplants"), ("plant", "plants")],
}

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "hexagon")
# saturated base colours; instances jitter around them
COLOURS = ((220, 40, 40), (240, 140, 20), (235, 215, 30), (40, 170, 60),
           (30, 190, 200), (40, 70, 220), (140, 50, 190), (235, 110, 180))
PATTERNS = ("solid", "stripes", "dots")


@dataclass(frozen=True)
class Category:
    """One object class: COCO identity plus the visual signature that identifies it in the drawn scenes."""

    id: int
    name: str
    theme: str
    partner: int
    shape: int
    colour: int
    pattern: int


def _build() -> list[Category]:
    # shape = i + 2t, colour = 3i + t (mod 8) is a bijection onto (shape, colour) pairs for t < 4, so no two
    # categories share both; half of the 64 combinations stay free for look-alike clutter.
    cats = []
    for t, (theme, spec) in enumerate(THEMES.items()):
        members = [m for pair in spec["pairs"] for m in pair]
        for i, (cid, name) in enumerate(members):
            pair = spec["pairs"][i // 2]
            partner = pair[1 - i % 2][0]
            cats.append(Category(cid, name, theme, partner, (i + 2 * t) % 8, (3 * i + t) % 8, (i + t) % 3))
    return cats


CATEGORIES: list[Category] = _build()
BY_ID: dict[int, Category] = {c.id: c for c in CATEGORIES}
BY_NAME: dict[str, Category] = {c.name: c for c in CATEGORIES}
USED_LOOKS = {(c.shape, c.colour) for c in CATEGORIES}
FREE_LOOKS = sorted({(s, k) for s in range(8) for k in range(8)} - USED_LOOKS)


def coco_categories() -> list[dict]:
    """Category records for ``instances_*.json`` in COCO order (sorted by id)."""
    return [{"id": c.id, "name": c.name, "supercategory": SUPERCATEGORY[c.name]}
            for c in sorted(CATEGORIES, key=lambda c: c.id)]


def synonyms_table() -> dict[str, list[str]]:
    """Every surface form (singular and plural) per category, for CHAIR-style matching."""
    return {name: [w for pair in forms for w in pair] for name, forms in SYNONYMS.items()}
