"""Write the synthetic world to disk in COCO layout.

The output is what the POPE / CHAIR tooling expects from real COCO: ``images/``, ``annotations/instances_<split>.json``,
``annotations/captions_<split>.json`` and a synonyms table, so the evaluation code paths run unchanged on the testbed.
Files are byte-for-byte deterministic for a given seed (fixed PNG settings, sorted JSON).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .categories import coco_categories, synonyms_table
from .scene import DEFAULT_P_PARTNER, IMAGE_SIZE, Scene, render_scene
from .text import captions, detailed_description

WORLD_VERSION = "2"
EVAL_SEED = 20260
TRAIN_SEED = 1


def text_rng(seed: int, index: int) -> np.random.Generator:
    """Text choices use their own stream so that drawing changes never reshuffle the captions."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index), 104729])


def _one(args):
    seed, index, p_partner, img_dir, split = args
    scene, img = render_scene(seed, index, p_partner)
    name = f"testbed_{split}_{index:06d}.png"
    img.save(os.path.join(img_dir, name), format="PNG", optimize=False, compress_level=6)
    rng = text_rng(seed, index)
    return scene, name, captions(scene, rng), detailed_description(scene, rng)


def _dump(obj, path: Path) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, separators=(",", ":")))


def build_world(out_dir, n_images: int, seed: int, split: str = "val", p_partner: float = DEFAULT_P_PARTNER,
                workers: int | None = None) -> Path:
    """Draw ``n_images`` scenes and write a COCO-style dataset under ``out_dir``; returns ``out_dir``.

    ``p_partner`` is the co-occurrence knob P(partner present | object present). ``workers`` > 1 draws in parallel;
    the result does not depend on it.
    """
    out = Path(out_dir)
    img_dir, ann_dir = out / "images", out / "annotations"
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(seed, i, p_partner, str(img_dir), split) for i in range(n_images)]
    workers = workers if workers is not None else (1 if n_images < 200 else min(8, os.cpu_count() or 1))
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            results = list(ex.map(_one, jobs, chunksize=32))
    else:
        results = [_one(j) for j in jobs]

    images, anns, caps, details, scenes = [], [], [], [], []
    for scene, name, cap_list, detail in results:
        image_id = scene.index + 1
        images.append({"id": image_id, "file_name": name, "width": IMAGE_SIZE, "height": IMAGE_SIZE})
        for o in scene.objects:
            x, y, w, h = o.bbox
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": o.category_id,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                         "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
        for c in cap_list:
            caps.append({"id": len(caps) + 1, "image_id": image_id, "caption": c})
        details.append({"image_id": image_id, "description": detail})
        scenes.append({"image_id": image_id, "theme": scene.theme})
    info = {"description": f"vlmfix testbed world v{WORLD_VERSION}", "version": WORLD_VERSION,
            "seed": seed, "p_partner": p_partner}
    _dump({"info": info, "licenses": [], "images": images, "annotations": anns, "categories": coco_categories()},
          ann_dir / f"instances_{split}.json")
    _dump({"info": info, "licenses": [], "images": images, "annotations": caps}, ann_dir / f"captions_{split}.json")
    _dump(synonyms_table(), ann_dir / "synonyms.json")
    _dump({"info": info, "scenes": scenes, "descriptions": details}, ann_dir / f"scenes_{split}.json")
    return out


def default_eval_world(root=None, n_images: int = 500) -> Path:
    """The held-out evaluation world (fixed seed), built once and cached.

    Lives under ``root`` or ``~/.cache/vlmfix/testbed_world_<version>`` (``..._n<N>`` for other sizes). It is built in
    a private temporary folder and moved into place, so concurrent first uses (tests, demo, CLI) and interrupted
    builds never leave a half-written world behind.
    """
    if root is None:
        name = f"testbed_world_{WORLD_VERSION}" + ("" if n_images == 500 else f"_n{n_images}")
        base = Path.home() / ".cache" / "vlmfix" / name
    else:
        base = Path(root)
    marker = f".complete_{n_images}"
    if (base / marker).exists():
        return base
    base.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{base.name}.", dir=base.parent))
    try:
        build_world(tmp, n_images, EVAL_SEED, split="val")
        (tmp / marker).write_text("ok")
        if (base / marker).exists():  # another process finished first
            return base
        base.mkdir(parents=True, exist_ok=True)
        for old in [*base.glob(".complete_*"), base / "images", base / "annotations"]:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            elif old.exists():
                old.unlink()
        for part in ("images", "annotations"):
            os.replace(tmp / part, base / part)
        os.replace(tmp / marker, base / marker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return base


def draw_arrays(seed: int, indices, p_partner: float = DEFAULT_P_PARTNER):
    """In-memory scenes for training: (uint8 array [N, H, W, 3], scenes, captions, descriptions)."""
    arrs, scenes, caps, details = [], [], [], []
    for i in indices:
        scene, img = render_scene(seed, i, p_partner)
        rng = text_rng(seed, i)
        arrs.append(np.asarray(img, dtype=np.uint8))
        scenes.append(scene)
        caps.append(captions(scene, rng))
        details.append(detailed_description(scene, rng))
    return np.stack(arrs), scenes, caps, details


def load_scenes(root, split: str = "val") -> list[tuple[dict, list[int], str]]:
    """Read back (image record, present category ids, theme) per image from a written world."""
    root = Path(root)
    inst = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    themes = {s["image_id"]: s["theme"] for s in
              json.loads((root / "annotations" / f"scenes_{split}.json").read_text())["scenes"]}
    present: dict[int, set] = {im["id"]: set() for im in inst["images"]}
    for a in inst["annotations"]:
        present[a["image_id"]].add(a["category_id"])
    return [(im, sorted(present[im["id"]]), themes[im["id"]]) for im in inst["images"]]


__all__ = ["build_world", "default_eval_world", "draw_arrays", "load_scenes", "Scene", "WORLD_VERSION"]
