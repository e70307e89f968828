"""PAI-style logit contrast: the optional second stream that every reported dual-stream (PAINT) run also used.

At each step the image-free prompt (visual tokens removed) is advanced with its own KV cache, and the next-token
log-probabilities become ``gamma * (logp_image - logp_text) + logp_text``, with tokens below ``cutoff * p_max`` of
the image stream masked (the plausibility constraint). It is off by default: it doubles the decoding cost and is
orthogonal to the attention patch. Unlike the reference code, the attention patch stays active on the first token.

    contrast = vlmfix.ImageFreeContrast(model, inputs, gamma=1.1)
    model.generate(**inputs, logits_processor=[contrast], do_sample=False)
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from transformers import DynamicCache, LogitsProcessor

from ..patches.adapter import adapter_for
from ..patches.api import get_patch


class ImageFreeContrast(LogitsProcessor):
    def __init__(self, model, inputs: dict, gamma: float = 1.1, cutoff: float = 0.1):
        if gamma < 1:
            raise ValueError(f"gamma must be >= 1 (1 = no contrast), got {gamma}")
        self.model, self.gamma, self.cutoff = model, gamma, cutoff
        adapter = adapter_for(model)
        if model.config.model_type in ("qwen2_vl", "qwen2_5_vl"):
            raise NotImplementedError("the image-free contrast stream needs 1-D positions; M-RoPE models "
                                      "(Qwen2-VL, Qwen2.5-VL) are not supported by it yet")
        pad = getattr(model.config.get_text_config(), "pad_token_id", None)
        twin = adapter.image_free_batch(dict(inputs), 0 if pad is None else pad)
        b = inputs["input_ids"].shape[0]
        self.ids = twin["input_ids"][b:]
        self.mask = twin["attention_mask"][b:]
        self.prompt_len = inputs["input_ids"].shape[1]
        self.cache = None
        # newer transformers name the cache argument ``cache`` (``past_key_values`` is deprecated there)
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def _text_logits(self, input_ids):
        """Advance the image-free stream to the tokens generated so far; its last-position logits."""
        generated = input_ids[:, self.prompt_len:]
        if self.cache is None:
            ids = torch.cat([self.ids, generated], dim=1)
            self.mask = torch.cat([self.mask, torch.ones_like(generated)], dim=1)
            self.cache = DynamicCache()
        else:
            ids = generated[:, -1:]
            self.mask = torch.cat([self.mask, torch.ones_like(ids)], dim=1)
        position_ids = (self.mask.long().cumsum(-1) - 1).clamp_min(0)[:, -ids.shape[1]:]
        handle = get_patch(self.model)
        with torch.no_grad(), (handle.session.suspended() if handle is not None else contextlib.nullcontext()):
            out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=position_ids, use_cache=True,
                             **{self._cache_arg: self.cache})
        return out.logits[:, -1].float()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        text = torch.log_softmax(self._text_logits(input_ids), dim=-1)
        image = torch.log_softmax(scores.float(), dim=-1)
        mixed = self.gamma * (image - text) + text
        keep = image >= image.max(dim=-1, keepdim=True).values + torch.log(torch.tensor(self.cutoff))
        return mixed.masked_fill(~keep, float("-inf")).to(scores.dtype)
