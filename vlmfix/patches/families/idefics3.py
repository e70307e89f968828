"""Idefics3 and SmolVLM: a SigLIP-style tower without CLS; the connector pixel-shuffles patches into fewer tokens.

Scores go through the connector's own ``pixel_shuffle`` (one channel wide) and are summed per LLM token, so the token
order is the model's. Pixel tensors are indexed by batch row, so the image-free twin rows get all-zero images, which
the model drops as padding images.
"""

from __future__ import annotations

import torch

from ..adapter import FamilyAdapter, register
from ._scores import stack_calls


@register
class Idefics3Adapter(FamilyAdapter):
    model_types = ("idefics3", "smolvlm")
    vision_has_cls = False

    def vision_tower(self):
        return self.model.model.vision_model

    def patch_scores_to_tokens(self, scores, forward_kwargs):
        per_image = stack_calls(scores).unsqueeze(-1)  # (n_images, patches, 1)
        factor = self.config.scale_factor
        shuffled = self.model.model.connector.pixel_shuffle(per_image, factor)
        return shuffled.sum(-1).reshape(-1)

    def image_free_batch(self, kwargs, pad_token_id, image_kwargs=None):
        out = super().image_free_batch(kwargs, pad_token_id, image_kwargs)
        for name in ("pixel_values", "pixel_attention_mask"):
            if kwargs.get(name) is not None:
                value = kwargs[name]
                out[name] = torch.cat([value, torch.zeros_like(value)], dim=0)
        return out
