"""The offline testbed: a synthetic COCO-format world and a small trained VLM that hallucinates like real ones."""

from __future__ import annotations


def load_model(device="cpu", dtype=None, path=None):
    """Load the shipped testbed LLaVA: ``(model, processor)`` (fp32 by default)."""
    import torch

    from .model import load_model as _load

    return _load(device=device, dtype=dtype or torch.float32, path=path)


def build_world(out_dir, n_images, seed, split="val", **kw):
    """Write a seeded synthetic world in COCO layout under ``out_dir`` (see :mod:`vlmfix.testbed.world`)."""
    from .world import build_world as _build

    return _build(out_dir, n_images, seed, split=split, **kw)


def default_eval_world(root=None, n_images=500):
    """The cached held-out evaluation world (COCO layout); built on first use."""
    from .world import default_eval_world as _default

    return _default(root, n_images=n_images)


__all__ = ["load_model", "build_world", "default_eval_world"]
