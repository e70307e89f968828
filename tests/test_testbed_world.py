"""The synthetic world: determinism, COCO validity, co-occurrence knob, captions."""

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from vlmfix.testbed import build_world, default_eval_world
from vlmfix.testbed.categories import BY_ID, CATEGORIES, FREE_LOOKS, USED_LOOKS, synonyms_table
from vlmfix.testbed.scene import IMAGE_SIZE, sample_scene


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("w"), 60, seed=3)


def test_same_seed_same_bytes(world, tmp_path):
    again = build_world(tmp_path / "again", 60, seed=3, workers=2)  # parallel drawing must not change anything
    assert _digest(world) == _digest(again)
    other = build_world(tmp_path / "other", 60, seed=4)
    assert _digest(world) != _digest(other)


def test_coco_files_load(world):
    from pycocotools.coco import COCO

    coco = COCO(str(world / "annotations" / "instances_val.json"))
    assert len(coco.getImgIds()) == 60
    valid = {c.id for c in CATEGORIES}
    assert set(coco.getCatIds()) == valid
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == {c.name for c in CATEGORIES}
    for ann in coco.loadAnns(coco.getAnnIds()):
        x, y, w, h = ann["bbox"]
        assert ann["category_id"] in valid and ann["iscrowd"] == 0
        assert 0 <= x and 0 <= y and x + w <= IMAGE_SIZE and y + h <= IMAGE_SIZE and w > 0 and h > 0
        assert ann["area"] == pytest.approx(w * h)
    for img in coco.loadImgs(coco.getImgIds()):
        assert (world / "images" / img["file_name"]).exists()
        assert img["width"] == img["height"] == IMAGE_SIZE
        n = len(coco.getAnnIds(imgIds=img["id"]))
        assert 1 <= n <= 6


def test_five_captions_each_mentioning_objects(world):
    from pycocotools.coco import COCO

    caps = COCO(str(world / "annotations" / "captions_val.json"))
    inst = json.loads((world / "annotations" / "instances_val.json").read_text())
    per_image = Counter(a["image_id"] for a in caps.dataset["annotations"])
    assert set(per_image.values()) == {5}
    syn = synonyms_table()
    for a in inst["annotations"][:50]:
        words = syn[BY_ID[a["category_id"]].name]
        texts = [c["caption"].lower() for c in caps.imgToAnns[a["image_id"]]]
        assert all(any(w in t for w in words) for t in texts)
    assert set(json.loads((world / "annotations" / "synonyms.json").read_text())) == {c.name for c in CATEGORIES}


@pytest.mark.parametrize("knob", [0.5, 0.8])
def test_partner_cooccurrence_follows_knob(knob):
    has_obj = has_both = 0
    for i in range(4000):
        _, counts, _ = sample_scene(11, i, p_partner=knob)
        for cid in counts:
            has_obj += 1
            has_both += BY_ID[cid].partner in counts
    assert abs(has_both / has_obj - knob) < 0.03
    # partner-missing scenes exist, as in POPE-adversarial
    assert has_both < has_obj


def test_categories_distinct_looks():
    assert len(CATEGORIES) >= 24 and len(USED_LOOKS) == len(CATEGORIES)
    assert not set(FREE_LOOKS) & USED_LOOKS


def test_default_eval_world_cached(tmp_path):
    root = default_eval_world(tmp_path / "cache", n_images=20)
    stamp = (root / "annotations" / "instances_val.json").stat().st_mtime_ns
    assert default_eval_world(tmp_path / "cache", n_images=20) == root
    assert (root / "annotations" / "instances_val.json").stat().st_mtime_ns == stamp
    assert (root / "annotations" / "captions_val.json").exists() and (root / "images").is_dir()
