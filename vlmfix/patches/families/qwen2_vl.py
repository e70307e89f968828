"""Qwen2-VL and Qwen2.5-VL: a ViT without CLS whose consecutive 2x2 patch groups merge into one LLM token.

Qwen2.5-VL's tower runs in window order; scores are grouped per merge unit and put back in raster order with the
same permutation the model applies to its features.
"""

from __future__ import annotations

import torch

from ..adapter import FamilyAdapter, register



def _window_index(visual, grid_thw):
    if hasattr(visual, "get_window_index"):
        return visual.get_window_index(grid_thw)[0]
    from transformers.vision_utils import get_vision_window_index

    cfg = visual.config
    return get_vision_window_index(grid_thw, cfg.spatial_merge_size, cfg.window_size, cfg.patch_size)[0]


@register
class Qwen2VLAdapter(FamilyAdapter):
    model_types = ("qwen2_vl", "qwen2_5_vl")
    vision_has_cls = False

    def vision_tower(self):
        return self.model.model.visual

    def patch_scores_to_tokens(self, scores, forward_kwargs):
        flat = torch.cat([s.reshape(-1) for s in scores])
        unit = self.model.model.visual.config.spatial_merge_size ** 2
        per_token = flat.view(-1, unit).sum(-1)
        if self.config.model_type == "qwen2_5_vl":
            grid = forward_kwargs.get("image_grid_thw")
            order = _window_index(self.model.model.visual, grid).to(per_token.device)
            per_token = per_token[torch.argsort(order)]
        return per_token

    def image_free_batch(self, kwargs, pad_token_id, image_kwargs=None):
        out = super().image_free_batch(kwargs, pad_token_id, image_kwargs)
        out.pop("rope_deltas", None)
        return out


