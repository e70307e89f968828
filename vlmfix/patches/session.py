"""Per-model patch state and the per-layer attention call that turns it into kernel parameters.

One ``PatchSession`` lives on a patched model (``model._vlmfix_session``); its *sequence state* is rebuilt at every
prefill (a forward whose cache is empty) and extended at every decode step, so nothing leaks between ``generate`` calls
or between models. Methods are ``MethodRuntime`` objects (``vlmfix/methods``) that contribute to the per-layer
``ReweightParams``; the session only owns what all of them share: which keys are visual, and the dispatch.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import torch

from ..kernels import ReweightParams, VISUAL
from ..kernels import attention as kernel_attention


@dataclass
class SequenceState:
    """What the current sequence looks like: key classes for every position seen so far (prompt + generated)."""

    classes: torch.Tensor  # (B, T) int32 bit field: VISUAL (method bits are added per call)
    has_visual: bool
    prompt_len: int  # width of the prompt batch: generated tokens start here
    input_ids: torch.Tensor | None = None
    new_sequence: bool = True  # True while every position of the sequence is in this forward (prefill)
    forward_kwargs: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.classes.shape[1]


@dataclass
class AttentionRecord:
    """Last-query-row attention captured at chosen layers, one dict per forward (prefill + every decode step)."""

    layers: tuple[int, ...]
    steps: list[dict[int, torch.Tensor]] = field(default_factory=list)  # layer -> (B, N) head-mean probabilities
    classes: list[torch.Tensor] = field(default_factory=list)  # (B, N) key classes per step

    def visual_maps(self, row: int = 0, layers: tuple[int, ...] | None = None) -> list[torch.Tensor]:
        """Per step, (len(layers), N_visual) attention of batch row ``row`` over its visual tokens."""
        out = []
        for step, cls in zip(self.steps, self.classes):
            visual = (cls[row] & VISUAL) != 0
            chosen = layers or self.layers
            out.append(torch.stack([step[layer][row][visual] for layer in chosen]))
        return out


class PatchSession:
    def __init__(self, model, adapter, runtimes, backend: str):
        self.model = model
        self.adapter = adapter
        self.runtimes = runtimes
        self.backend = backend
        self.n_layers = len(adapter.decoder_layers())
        self.visual_ids = adapter.visual_token_ids()
        self.seq: SequenceState | None = None
        self._visual_ids_t = None
        self.image_kwargs: dict = {}  # arguments of the last image-encoder call (sizes, grids)
        self.record: AttentionRecord | None = None
        self._suspended = 0
        self._warned_no_image = False
        self.runtimes = sorted(runtimes, key=lambda rt: rt.start_priority)
        self.contributors = sorted(runtimes, key=lambda rt: rt.contribute_priority)
        # per layer, the methods acting on it in contribution order (looked up once per layer call; empty: inactive)
        self.contributors_of = [tuple(rt for rt in self.contributors if layer in rt.layers)
                                for layer in range(self.n_layers)]

    # -- lifecycle -------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def suspended(self):
        """Run nested forwards (discovery, selection) without our effects or state changes."""
        self._suspended += 1
        try:
            yield
        finally:
            self._suspended -= 1

    @contextlib.contextmanager
    def recording_paused(self):
        saved, self.record = self.record, None
        try:
            yield
        finally:
            self.record = saved

    @property
    def is_suspended(self) -> bool:
        return self._suspended > 0

    def on_model_forward(self, kwargs: dict):
        """Top-level forward pre-hook: a new sequence (empty cache) or a decode step."""
        if self.is_suspended:
            return
        input_ids = kwargs.get("input_ids")
        cache = kwargs.get("past_key_values", kwargs.get("cache"))  # renamed ``cache`` in newer transformers
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        if input_ids is None:
            if past == 0:
                self.seq = None
                self._warn_no_image("the model was called without input_ids (inputs_embeds only)")
            elif self.seq is not None:  # a decode step fed by embeddings: treat the new tokens as text
                q_len = kwargs["inputs_embeds"].shape[1]
                self._extend(torch.zeros(self.seq.classes.shape[0], q_len, dtype=torch.long,
                                         device=self.seq.classes.device))
            return
        if past > 0 and self.seq is not None:
            self._extend(input_ids)
        elif self._continues(input_ids, kwargs):
            self._continue(input_ids)
        else:
            self._start(input_ids, kwargs)

    def _visual(self, input_ids):
        ids = self._visual_ids_t
        if ids is None or ids.device != input_ids.device:
            ids = self._visual_ids_t = torch.tensor(self.visual_ids, device=input_ids.device)
        return torch.isin(input_ids, ids)

    def _continues(self, input_ids, kwargs) -> bool:
        """A cache-free generation step: the same rows as the last forward plus new tokens, with ``use_cache=False``.

        Such a step must behave like a cached decode step (heads chosen at the first step stay, emphasis rows stay
        those of the generated tokens), so greedy decoding is the same with and without the KV cache.
        """
        seq = self.seq
        if kwargs.get("use_cache") is not False or seq is None or seq.input_ids is None:
            return False
        known = seq.input_ids
        return (input_ids.shape[0] == known.shape[0] and input_ids.shape[1] > known.shape[1]
                and torch.equal(input_ids[:, : known.shape[1]], known))

    def _continue(self, input_ids):
        seq = self.seq
        n_new = input_ids.shape[1] - seq.input_ids.shape[1]
        seq.classes = torch.cat([seq.classes, self._visual(input_ids[:, -n_new:]).to(torch.int32) * VISUAL], dim=1)
        seq.input_ids = input_ids
        seq.new_sequence = True
        for rt in self.runtimes:
            rt.extend_sequence(self, n_new)

    def _start(self, input_ids, kwargs):
        visual = self._visual(input_ids)
        classes = visual.to(torch.int32) * VISUAL
        has_visual = bool(visual.any())
        self.seq = SequenceState(classes=classes, has_visual=has_visual, prompt_len=input_ids.shape[1],
                                 input_ids=input_ids, forward_kwargs=kwargs)
        if not has_visual and self.runtimes:
            self._warn_no_image("a prompt without image tokens")
        if self.record is not None:
            self.record.steps.clear()
            self.record.classes.clear()
        for rt in self.runtimes:
            rt.start_sequence(self, kwargs)

    def _extend(self, input_ids):
        seq = self.seq
        seq.new_sequence = False
        seq.input_ids = None  # only cache-free steps are matched against the ids seen so far
        seq.classes = torch.cat([seq.classes, self._visual(input_ids).to(torch.int32) * VISUAL], dim=1)
        for rt in self.runtimes:
            rt.extend_sequence(self, input_ids.shape[1])

    def _warn_no_image(self, what):
        if not self._warned_no_image:
            self._warned_no_image = True
            warnings.warn(f"vlmfix: {what}; the patch has no effect on it (the model behaves as unpatched)",
                          stacklevel=3)

    # -- the attention call ----------------------------------------------------------------------------------------
    def attend(self, layer: int, module, query, key, value, attention_mask, scaling, kwargs, fallback):
        seq = self.seq
        recording = self.record is not None and layer in self.record.layers and not self._suspended
        if (self._suspended or seq is None or not seq.has_visual or module.training
                or (not self.contributors_of[layer] and not recording)):
            return fallback(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

        kv_len = key.shape[2]
        if attention_mask is not None:
            if attention_mask.dtype != torch.bool:
                attention_mask = attention_mask > torch.finfo(attention_mask.dtype).min / 2
            if attention_mask.shape[-1] != kv_len:
                attention_mask = attention_mask[:, :, :, :kv_len]
        classes = seq.classes
        if classes.shape[1] != kv_len:
            if classes.shape[1] < kv_len:
                raise RuntimeError(f"vlmfix: layer {layer} got {kv_len} keys but only {classes.shape[1]} positions "
                                   "were seen; was the model called with a cache the patch did not see filled?")
            classes = classes[:, -kv_len:]  # sliding-window layers keep only the last keys
        # methods never write into ``classes`` in place (it is the shared sequence state): they rebind call.classes
        call = LayerCall(layer, query, key, value, attention_mask, scaling if scaling is not None else module.scaling,
                         classes, ReweightParams(), self)
        for rt in self.contributors_of[layer]:
            rt.contribute(call)
        params = call.params
        want = ()
        if recording:
            want = ("last_row_probs",)
            params.key_class = call.classes
        elif params.key_class is None and not params.is_identity:
            params.key_class = call.classes
        out, stats = kernel_attention(query, key, value, scale=call.scale, mask=attention_mask, params=params,
                                      want=want, backend=self.backend)
        for fix in call.post:
            out = fix(out)
        if recording:
            self.record_step(layer, stats["last_row_probs"].float().mean(1), call.classes)
        return out, None

    def record_step(self, layer, probs, classes):
        rec = self.record
        first = min(rec.layers)
        if layer == first or not rec.steps:
            rec.steps.append({})
            rec.classes.append(classes)
        rec.steps[-1][layer] = probs.detach()


@dataclass
class LayerCall:
    """One attention call as the methods see it; they fill ``params`` (and may add output fixes in ``post``)."""

    layer: int
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None
    scale: float
    classes: torch.Tensor  # (B, N) aligned with the keys
    params: ReweightParams
    session: PatchSession
    post: list = field(default_factory=list)

    def kernel(self, query=None, mask=..., params=None, want=()):
        """Run the kernel on (a slice of) this call, e.g. the last query row, with other parameters."""
        return kernel_attention(self.query if query is None else query, self.key, self.value, scale=self.scale,
                                mask=self.mask if mask is ... else mask, params=params, want=want,
                                backend=self.session.backend)
