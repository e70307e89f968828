"""VHR at runtime: choose the vision-aware heads once per sequence (at its first step), then scale them.

``exact`` (the paper's Alg. 1): before the real prefill, one extra forward runs the batch together with its
image-free twin (visual tokens removed) as extra batch rows; at each VHR layer the last-position head outputs of the
two halves give VHD, the heads are chosen and both halves are reinforced before the next layer, so later layers see
earlier reinforcement. ``fused``: no extra pass; the image-free head output is approximated by attention restricted to
the non-visual keys of the same pass, computed for the last query row only.
"""

from __future__ import annotations

import dataclasses

import torch

from ..heads import head_divergence, select_heads, text_norm_sq
from ..kernels import NUM_CLASSES, VISUAL
from .base import MethodRuntime


# a log-bias row that removes every visual key class: attention "without the image" inside the same pass
_VISUAL_OFF = torch.tensor([float("-inf") if c & VISUAL else 0.0 for c in range(NUM_CLASSES)])


class VhrRuntime(MethodRuntime):
    start_priority = 0
    contribute_priority = 2

    def __init__(self, cfg, adapter):
        super().__init__(cfg, adapter)
        self.heads: dict[int, torch.Tensor] = {}
        self.selecting_rows: int | None = None  # batch size of the real rows while the exact selection pass runs
        self.vhd: dict[int, torch.Tensor] = {}
        self.scales: dict[int, torch.Tensor] = {}  # per layer (B, H) head scale, made once per sequence

    def start_sequence(self, session, kwargs):
        if self.selecting_rows is not None:
            return  # the selection pass itself: heads are being chosen layer by layer
        self.heads, self.vhd, self.scales = {}, {}, {}
        if self.cfg.mode != "exact" or not session.seq.has_visual:
            return
        pad = getattr(self.adapter.text_config(), "pad_token_id", None)
        twin = self.adapter.image_free_batch(kwargs, 0 if pad is None else pad, session.image_kwargs)
        real_seq = session.seq
        self.selecting_rows = kwargs["input_ids"].shape[0]
        try:
            with torch.no_grad(), session.recording_paused():
                session.model(**twin)
        finally:
            self.selecting_rows = None
            session.seq = real_seq

    def _scale(self, heads, dtype=torch.float32):
        return 1.0 + (self.cfg.alpha - 1.0) * heads.to(dtype)

    def _choose(self, layer, with_image, without_image):
        vhd = head_divergence(with_image, without_image)
        heads = select_heads(vhd, text_norm_sq(without_image), outlier_rule=self.cfg.outlier_rule)
        self.heads[layer], self.vhd[layer] = heads, vhd
        return heads

    def contribute(self, call):
        layer = call.layer
        if self.selecting_rows is not None:
            b = self.selecting_rows

            def select_and_scale(out):  # out: (2B, M, H, D), after the other methods' effects
                heads = self._choose(layer, out[:b, -1].float(), out[b:, -1].float())
                scale = self._scale(heads).repeat(2, 1)
                return (out.float() * scale[:, None, :, None]).to(out.dtype)

            call.post.append(select_and_scale)
            return
        if layer not in self.heads and call.session.seq.new_sequence and self.cfg.mode == "fused":
            self._fused_select(call)
        scale = self.scales.get(layer)
        if scale is None and layer in self.heads:
            scale = self.scales[layer] = self._scale(self.heads[layer]).to(call.query.device)
        if scale is not None and scale.shape[0] == call.query.shape[0]:
            call.params.head_scale = scale

    def _fused_select(self, call):
        q_last = call.query[:, :, -1:]
        mask = call.mask[:, :, -1:] if call.mask is not None else None
        params = dataclasses.replace(call.params, head_scale=None, key_class=call.classes)
        full, _ = call.kernel(q_last, mask=mask, params=params)
        b, h = call.query.shape[:2]
        drop_visual = _VISUAL_OFF.to(call.query.device).expand(b, h, NUM_CLASSES)
        if params.log_bias is not None:
            drop_visual = drop_visual + params.log_bias
        text_only, _ = call.kernel(q_last, mask=mask, params=dataclasses.replace(params, log_bias=drop_visual,
                                                                                   var_p=None))
        self._choose(call.layer, full[:, 0].float(), text_only[:, 0].float())
