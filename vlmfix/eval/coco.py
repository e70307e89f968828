"""COCO annotation loading with clear errors: pycocotools for the index, our checks for the shape.

A wrong file (a captions file where instances were expected, a truncated download, a non-COCO JSON) otherwise fails
deep inside pycocotools with a KeyError; here it fails with the file name and what a COCO file must contain.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from .errors import EvalInputError


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise EvalInputError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalInputError(f"{path} is not valid JSON ({exc}); expected a COCO annotation file") from None
    if not isinstance(data, dict):
        raise EvalInputError(f"{path} holds a JSON {type(data).__name__}; expected a COCO annotation object "
                             "with 'images', 'annotations' and 'categories'")
    return data


def _check_keys(path, data, keys, kind):
    missing = [k for k in keys if not isinstance(data.get(k), list)]
    if missing:
        raise EvalInputError(f"{path} is not a COCO {kind} file: missing list(s) {missing}; expected keys {keys}")


def load_instances(path):
    """A ``pycocotools.coco.COCO`` index of an ``instances_*.json`` file, after checking its shape."""
    from pycocotools.coco import COCO

    path = Path(path)
    data = _load_json(path)
    _check_keys(path, data, ["images", "annotations", "categories"], "instances")
    cat_ids = set()
    for c in data["categories"]:
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise EvalInputError(f"{path}: every category needs 'id' and 'name', got {c!r}")
        cat_ids.add(c["id"])
    img_ids = set()
    for im in data["images"]:
        if not isinstance(im, dict) or "id" not in im:
            raise EvalInputError(f"{path}: every image needs an 'id', got {im!r}")
        img_ids.add(im["id"])
    for a in data["annotations"]:
        if not isinstance(a, dict) or "image_id" not in a or "category_id" not in a:
            raise EvalInputError(f"{path}: every annotation needs 'image_id' and 'category_id', got {a!r}")
        if a["category_id"] not in cat_ids:
            raise EvalInputError(f"{path}: annotation {a.get('id')} uses unknown category id {a['category_id']}; "
                                 f"categories defined: {sorted(cat_ids)}")
        if a["image_id"] not in img_ids:
            raise EvalInputError(f"{path}: annotation {a.get('id')} refers to unknown image id {a['image_id']}")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_captions(path) -> list[tuple[int, str]]:
    """(image_id, caption) pairs of a ``captions_*.json`` file, after checking its shape."""
    path = Path(path)
    data = _load_json(path)
    _check_keys(path, data, ["images", "annotations"], "captions")
    out = []
    for a in data["annotations"]:
        if not isinstance(a, dict) or "image_id" not in a or not isinstance(a.get("caption"), str):
            raise EvalInputError(f"{path}: every caption annotation needs 'image_id' and a string 'caption', "
                                 f"got {a!r}")
        out.append((a["image_id"], a["caption"]))
    return out


def find_annotation_files(root) -> tuple[list[Path], list[Path]]:
    """``instances_*.json`` and ``captions_*.json`` under a directory (a file means that file alone)."""
    root = Path(root)
    if root.is_file():
        name = root.name
        if name.startswith("captions_"):
            return [], [root]
        return [root], []
    if not root.is_dir():
        raise EvalInputError(f"annotation path not found: {root}")
    return sorted(root.glob("instances_*.json")), sorted(root.glob("captions_*.json"))


def resolve_instances_file(path) -> Path:
    """The one instances file POPE needs: the path itself, or the single ``instances_*.json`` in a directory."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise EvalInputError(f"annotation path not found: {path}")
    found = sorted(path.glob("instances_*.json"))
    if len(found) != 1:
        raise EvalInputError(f"{path} holds {len(found)} instances_*.json files; pass the one to use "
                             "(e.g. instances_val2014.json)")
    return found[0]


def image_path(images_dir, file_name: str) -> Path:
    """Where an image lives; a missing image is an input error naming the file and the directory searched."""
    p = Path(images_dir) / file_name
    if not p.is_file():
        raise EvalInputError(f"image {file_name!r} not found in {images_dir}; expected the COCO image files the "
                             "annotations/questions refer to")
    return p
