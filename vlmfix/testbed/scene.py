"""Scene sampling and drawing.

A scene is sampled from a theme and a handful of partner pairs, then drawn with PIL. Every random choice comes from a
generator seeded by ``(seed, index)``, so scene ``i`` is identical however many processes draw the world and in which
order. Objects are identified by a (shape, colour) signature plus a texture; clutter reuses the unused half of the
signature space, so recognising an object means binding shape to colour rather than spotting one feature, which
keeps the vision side fallible and lets the decoder's co-occurrence prior show through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from .categories import BY_ID, CATEGORIES, COLOURS, FREE_LOOKS, THEMES

IMAGE_SIZE = 112
THEME_NAMES = tuple(THEMES)
DEFAULT_P_PARTNER = 0.85


@dataclass
class SceneObject:
    category_id: int
    bbox: tuple[float, float, float, float]  # x, y, w, h in pixels


@dataclass
class Scene:
    index: int
    theme: str
    objects: list[SceneObject] = field(default_factory=list)

    @property
    def category_ids(self) -> list[int]:
        return sorted({o.category_id for o in self.objects})


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index), 7919])


def sample_scene(seed: int, index: int, p_partner: float = DEFAULT_P_PARTNER, off_theme: float = 0.1):
    """Draw the symbolic content of scene ``index``: theme, categories, instance counts.

    A pair is kept whole with probability q = k / (2 - k) and otherwise contributes one random member, which makes
    P(partner present | object present) equal to the knob ``k = p_partner`` exactly in expectation (each object
    enters only through its pair). Scenes with a lone member are the "usual partner missing" cases.
    """
    rng = _rng(seed, index)
    theme = THEME_NAMES[rng.integers(len(THEME_NAMES))]
    n_pairs = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
    own = list(range(4))
    rng.shuffle(own)
    pairs = []
    for j in range(n_pairs):
        if rng.random() < off_theme:
            other = [t for t in THEME_NAMES if t != theme][rng.integers(3)]
            pairs.append(THEMES[other]["pairs"][rng.integers(4)])
        else:
            pairs.append(THEMES[theme]["pairs"][own[j]])
    q = p_partner / (2.0 - p_partner)
    counts: dict[int, int] = {}
    for a, b in pairs:
        members = [a, b] if rng.random() < q else [(a, b)[rng.integers(2)]]
        for cid, _ in members:
            counts[cid] = counts.get(cid, 0) + (2 if rng.random() < 0.2 else 1)
    # cap at six instances, trimming duplicates first so that categories survive
    while sum(counts.values()) > 6:
        dup = [c for c, n in counts.items() if n > 1]
        counts[dup[0] if dup else sorted(counts)[-1]] -= 1
        counts = {c: n for c, n in counts.items() if n > 0}
    return theme, counts, rng


# ---------------------------------------------------------------------------------------------------------- drawing

def _background(theme: str, rng: np.random.Generator) -> Image.Image:
    s = IMAGE_SIZE
    a = np.zeros((s, s, 3), np.float32)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    j = rng.uniform(-18, 18, 3)
    if theme == "kitchen":  # pale tiles with grout lines
        a[:] = np.array([225, 215, 195]) + j
        step = int(rng.integers(14, 22))
        grout = ((yy.astype(int) % step) < 1) | ((xx.astype(int) % step) < 1)
        a[grout] -= 45
    elif theme == "street":  # asphalt with a dashed lane marking
        a[:] = np.array([95, 95, 100]) + j
        lane = int(rng.integers(30, 80))
        dash = ((xx.astype(int) // 10) % 2 == 0) & (np.abs(yy - lane) < 1.5)
        a[dash] = (235, 225, 120)
    elif theme == "park":  # sky over grass
        horizon = int(rng.integers(25, 50))
        a[:] = np.array([150, 200, 240]) + j
        a[yy >= horizon] = np.array([95, 160, 80]) + j
    else:  # office: wood grain
        a[:] = np.array([165, 120, 80]) + j
        a += 12 * np.sin(yy[..., None] * rng.uniform(0.3, 0.6) + 3 * np.sin(xx[..., None] * 0.05))
    a += rng.normal(0, 9, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _polygon(shape: int, w: float, h: float) -> list[tuple[float, float]] | None:
    cx, cy, rx, ry = w / 2, h / 2, w / 2, h / 2
    if shape == 2:  # triangle
        return [(cx, 0), (w, h), (0, h)]
    if shape == 3:  # diamond
        return [(cx, 0), (w, cy), (cx, h), (0, cy)]
    if shape == 4:  # cross
        t = 0.32
        return [(w * t, 0), (w * (1 - t), 0), (w * (1 - t), h * t), (w, h * t), (w, h * (1 - t)),
                (w * (1 - t), h * (1 - t)), (w * (1 - t), h), (w * t, h), (w * t, h * (1 - t)), (0, h * (1 - t)),
                (0, h * t), (w * t, h * t)]
    if shape == 6:  # five-pointed star
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.45
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rx * r * math.cos(ang), cy + ry * r * math.sin(ang)))
        return pts
    if shape == 7:  # hexagon
        return [(cx + rx * math.cos(k * math.pi / 3), cy + ry * math.sin(k * math.pi / 3)) for k in range(6)]
    return None


def _draw_thing(shape: int, colour: tuple, pattern: int, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """An RGBA sprite: filled silhouette, category texture, dark outline."""
    fill = tuple(int(np.clip(c + rng.normal(0, 14), 0, 255)) for c in colour)
    dark = tuple(int(c * 0.45) for c in fill)
    mask = Image.new("L", (w, h), 0)
    md = ImageDraw.Draw(mask)
    box = (0, 0, w - 1, h - 1)
    poly = _polygon(shape, w - 1, h - 1)
    if shape == 0:
        md.ellipse(box, fill=255)
    elif shape == 1:
        md.rectangle(box, fill=255)
    elif shape == 5:
        md.ellipse(box, fill=255)
        t = max(2, int(min(w, h) * 0.28))
        md.ellipse((t, t, w - 1 - t, h - 1 - t), fill=0)
    else:
        md.polygon(poly, fill=255)
    tex = Image.new("RGB", (w, h), fill)
    td = ImageDraw.Draw(tex)
    period = int(rng.integers(4, 7))
    if pattern == 1:
        for x in range(-h, w, period):
            td.line((x, 0, x + h, h), fill=dark, width=1)
    elif pattern == 2:
        off = int(rng.integers(period))
        for y in range(off, h, period):
            for x in range(off, w, period):
                td.point((x, y), fill=(255, 255, 255))
    sprite = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    sprite.paste(Image.new("RGB", (w, h), dark), (0, 0), mask)
    inner = mask.resize((max(1, w - 2), max(1, h - 2)))
    pad = Image.new("L", (w, h), 0)
    pad.paste(inner, (1, 1))
    sprite.paste(tex, (0, 0), pad)
    return sprite


def _place(rng, w, h, taken, max_overlap=0.45):
    """Pick a position whose overlap with earlier boxes stays below ``max_overlap`` of the smaller box."""
    s = IMAGE_SIZE
    best = None
    for _ in range(20):
        x, y = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
        worst = 0.0
        for (tx, ty, tw, th) in taken:
            ix = max(0, min(x + w, tx + tw) - max(x, tx))
            iy = max(0, min(y + h, ty + th) - max(y, ty))
            worst = max(worst, ix * iy / min(w * h, tw * th))
        if worst <= max_overlap:
            return x, y
        if best is None or worst < best[0]:
            best = (worst, x, y)
    return best[1], best[2]


def render_scene(seed: int, index: int, p_partner: float = DEFAULT_P_PARTNER) -> tuple[Scene, Image.Image]:
    """Sample and draw scene ``index``; returns its annotation and a 112x112 RGB image."""
    theme, counts, rng = sample_scene(seed, index, p_partner)
    img = _background(theme, rng)
    scene = Scene(index=index, theme=theme)
    instances = [cid for cid in sorted(counts) for _ in range(counts[cid])]
    rng.shuffle(instances)
    n_clutter = int(rng.choice([0, 1, 2, 3, 4], p=[0.15, 0.3, 0.3, 0.15, 0.1]))
    items = [("obj", c) for c in instances] + [("clutter", FREE_LOOKS[rng.integers(len(FREE_LOOKS))])
                                                for _ in range(n_clutter)]
    order = rng.permutation(len(items))
    taken: list[tuple] = []
    for k in order:
        kind, what = items[k]
        size = rng.uniform(12, 34) if kind == "obj" else rng.uniform(10, 26)
        aspect = rng.uniform(0.75, 1.33)
        w, h = int(max(8, size * aspect)), int(max(8, size / aspect))
        if kind == "obj":
            cat = BY_ID[what]
            sprite = _draw_thing(cat.shape, COLOURS[cat.colour], cat.pattern, w, h, rng)
        else:
            shape, colour = what
            muted = tuple(int(0.7 * c + 0.3 * 128) for c in COLOURS[colour])
            sprite = _draw_thing(shape, muted, int(rng.integers(3)), w, h, rng)
        x, y = _place(rng, w, h, taken)
        taken.append((x, y, w, h))
        img.paste(sprite, (x, y), sprite)
        if kind == "obj":
            scene.objects.append(SceneObject(what, (float(x), float(y), float(w), float(h))))
    scene.objects.sort(key=lambda o: -o.bbox[2] * o.bbox[3])
    return scene, img


def all_category_ids() -> list[int]:
    return sorted(c.id for c in CATEGORIES)
