"""Dual-stream emphasis at runtime: local and summary visual tokens from the vision tower, emphasised in the LLM.

The vision tower is routed through a pass-through attention function that, on two layers only (the first, and the
one whose output the projector consumes), records per-patch scores: CLS-row attention where the tower has a CLS token
(the paper), else the mean attention each patch receives (our substitute for CLS-free towers: the columns CLS would
read). The family adapter maps patch scores onto the LLM's visual tokens through the model's own merge/pool/pack
step. Selection is per batch row: local = top ``local_ratio`` of the row's visual tokens by first-layer score,
summary = Tukey outliers of the feature-layer score, local minus summary. The kernel's ``amp`` switch then applies
``s + alpha*|s|`` / ``s + beta*|s|`` on the current last query row in every dual-stream layer.
"""

from __future__ import annotations

import torch

from ..heads import cls_attention, local_tokens, received_attention, summary_tokens
from ..kernels import LOCAL, NUM_CLASSES, SUMMARY, VISUAL
from ..patches.attention_fn import VISION_ATTR, AttrRemover
from .base import MethodRuntime, PerHeadTable


class DualStreamRuntime(MethodRuntime):
    contribute_priority = 0

    def __init__(self, cfg, adapter):
        super().__init__(cfg, adapter)
        self.scores = {"local": [], "summary": []}
        self.used_scores = None  # the scores behind the last selection, for forwards that skip the tower
        self.bits: torch.Tensor | None = None
        self._amp = PerHeadTable(self._amp_table)

    def install(self, session):
        modules = self.adapter.vision_attention_modules()
        roles = {0: ["local"]}
        roles.setdefault(self.adapter.summary_layer(), []).append("summary")
        for idx, names in roles.items():
            setattr(modules[idx], VISION_ATTR, self._recorder(session, tuple(names)))
        self._modules = [modules[idx] for idx in roles]
        return [AttrRemover(self._modules, VISION_ATTR)]

    def _recorder(self, session, names):
        has_cls = self.adapter.vision_has_cls

        def record(module, query, key, mask, scale):
            if session.is_suspended:
                return
            with torch.no_grad():
                score = cls_attention(query, key, scale) if has_cls else received_attention(query, key, scale)
            for name in names:
                self.scores[name].append(score)

        return record

    def start_sequence(self, session, kwargs):
        # no reset of ``scores`` here: generate() may run the vision tower before the model's forward (precomputed
        # encoder outputs), so scores recorded since the last selection belong to this sequence
        self.bits = None

    def extend_sequence(self, session, n_new):
        self.scores = {"local": [], "summary": []}  # a cache-free step re-runs the tower: selection stays

    def _finalize(self, session):
        seq = session.seq
        visual = (seq.classes & VISUAL) != 0
        n_visual = int(visual.sum())
        self.bits = torch.zeros_like(seq.classes)
        fresh = bool(self.scores["local"] and self.scores["summary"])
        scores = self.scores if fresh else self.used_scores
        self.scores = {"local": [], "summary": []}
        if scores is None:
            return
        image_kwargs = {**seq.forward_kwargs, **session.image_kwargs}
        local = self.adapter.patch_scores_to_tokens(scores["local"], image_kwargs)
        summary = self.adapter.patch_scores_to_tokens(scores["summary"], image_kwargs)
        if local.numel() != n_visual:
            if fresh:
                raise RuntimeError(f"vlmfix dual-stream: the vision tower gave {local.numel()} token scores for "
                                   f"{n_visual} visual tokens")
            return  # stale scores of another prompt: no selection rather than a wrong one
        self.used_scores = scores
        local_full = torch.full(visual.shape, float("-inf"), device=visual.device)
        summary_full = local_full.clone()
        local_full[visual] = local.float().to(visual.device)
        summary_full[visual] = summary.float().to(visual.device)
        for row in range(visual.shape[0]):
            keep = visual[row] & torch.isfinite(local_full[row])
            if not keep.any():
                continue
            loc = local_tokens(local_full[row][keep][None], self.cfg.local_ratio)[0]
            summ = summary_tokens(summary_full[row][keep][None])[0]
            self.bits[row, keep.nonzero().squeeze(1)] = (loc & ~summ).int() * LOCAL + summ.int() * SUMMARY
        # the selection is part of the sequence from now on: decode steps append plain classes after it
        seq.classes = seq.classes | self.bits

    def _amp_table(self, query):
        """The (B, H, 16) emphasis table for ``query``'s batch and heads, on its device."""
        table = torch.zeros(NUM_CLASSES, dtype=torch.float32)
        for c in range(NUM_CLASSES):
            if c & VISUAL and c & LOCAL:
                table[c] = self.cfg.alpha
            elif c & VISUAL and c & SUMMARY:
                table[c] = self.cfg.beta
        return table.to(query.device).expand(query.shape[0], query.shape[1], NUM_CLASSES).contiguous()

    def contribute(self, call):
        kv_len = call.key.shape[2]
        if self.bits is not None and self.scores["local"]:
            self.scores = {"local": [], "summary": []}  # a cache-free step re-ran the tower: the selection stays
        if self.bits is None:
            self._finalize(call.session)
            classes = call.session.seq.classes
            call.classes = classes if classes.shape[1] == kv_len else classes[:, -kv_len:]
        call.params.key_class = call.classes
        call.params.amp = self._amp(call.query)
        seq = call.session.seq
        # the prompt's last row and every generated token's row, in this call's key indices (sliding caches crop)
        call.params.amp_start = seq.prompt_len - 1 - (seq.length - kv_len)
