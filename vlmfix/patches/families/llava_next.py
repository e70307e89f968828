"""LLaVA-NeXT (``llava_next``): AnyRes crops of a CLIP tower, unpadded and packed with a newline token per row.

Patch scores follow the image features through the model's own ``pack_image_features`` (one channel wide), so the
token order is exactly the model's; newline tokens get ``-inf`` and are never selected.
"""

from __future__ import annotations

import torch
from transformers.models.llava_next import modeling_llava_next as mln

from ..adapter import register
from ._scores import align_cls, stack_calls
from .llava import LlavaAdapter


@register
class LlavaNextAdapter(LlavaAdapter):
    """Same tower and feature layer as LLaVA-1.5; only the patch-to-token layout differs."""

    model_types = ("llava_next",)

    def patch_scores_to_tokens(self, scores, forward_kwargs):
        strategy = getattr(self.config, "vision_feature_select_strategy", "default")
        per_crop = align_cls(stack_calls(scores), strategy)  # (total crops, patches)
        image_sizes = forward_kwargs["image_sizes"]
        counts = [
            mln.image_size_to_num_patches(image_size=size, grid_pinpoints=self.config.image_grid_pinpoints,
                                          patch_size=self.config.vision_config.image_size)
            for size in image_sizes
        ]
        features = [f.unsqueeze(-1) for f in torch.split(per_crop, counts, dim=0)]
        newline = torch.full((1,), float("-inf"), dtype=per_crop.dtype, device=per_crop.device)
        packed, _ = self.model.model.pack_image_features(features, image_sizes, strategy, image_newline=newline)
        if isinstance(packed, (list, tuple)):  # newer releases return one tensor per image
            packed = torch.cat([p.reshape(-1) for p in packed])
        return packed.reshape(-1)
