"""VAR at runtime: sink tokens per layer from the residual stream, then the kernel's adaptive redistribution.

Sinks are found by a forward pre-hook on each VAR layer (phi on the hidden state *entering* the layer, as the paper
defines it), stored per layer for every position of the sequence, and turned into the SINK bit of the key classes.
The row/head test and the redistribution itself are the kernel's ``var_p`` switch (see ``kernels/reference.py``).
"""

from __future__ import annotations

import warnings

import torch

from ..heads import detect_sinks, find_sink_dims, known_sink_dims
from ..kernels import SINK, VISUAL
from .base import MethodRuntime


class VarRuntime(MethodRuntime):
    def __init__(self, cfg, adapter):
        super().__init__(cfg, adapter)
        self.dims = tuple(cfg.sink_dims) if cfg.sink_dims is not None else known_sink_dims(adapter.config)
        hidden = adapter.text_config().hidden_size
        if self.dims is not None and any(not 0 <= d < hidden for d in self.dims):
            raise ValueError(f"VAR sink_dims {self.dims} out of range for hidden size {hidden}")
        self.sinks: dict[int, torch.Tensor] = {}
        self._warned = False
        self._var_p = None
        self._dims_t = None  # sink dims as a device tensor: no host copy per layer and step

    def install(self, session):
        handles = []
        layers = self.adapter.decoder_layers()
        for idx in sorted(self.layers):
            handles.append(layers[idx].register_forward_pre_hook(self._hook(session, idx), with_kwargs=True))
        return handles

    def _hook(self, session, idx):
        def pre_hook(module, args, kwargs):
            seq = session.seq
            if session.is_suspended or seq is None or not seq.has_visual or not self.dims:
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            dims = self._dims_on(hidden.device)
            if seq.new_sequence:
                self.sinks[idx] = detect_sinks(hidden, dims, self.cfg.tau, strict=self.cfg.compat)
            elif idx in self.sinks:
                detect = self.cfg.detect_on_decode and not self.cfg.compat
                new = (detect_sinks(hidden, dims, self.cfg.tau, strict=self.cfg.compat) if detect
                       else torch.zeros(hidden.shape[:2], dtype=torch.bool, device=hidden.device))
                self.sinks[idx] = torch.cat([self.sinks[idx], new], dim=1)
            return None

        return pre_hook

    def _dims_on(self, device):
        if self._dims_t is None or self._dims_t.device != device or self._dims_t.numel() != len(self.dims):
            self._dims_t = torch.tensor(self.dims, dtype=torch.long, device=device)
        return self._dims_t

    def start_sequence(self, session, kwargs):
        self.sinks = {}
        if self.dims is None and session.seq.has_visual:
            drop = ("past_key_values", "cache", "use_cache", "return_dict", "output_hidden_states",
                    "output_attentions", "logits_to_keep")
            inputs = {k: v for k, v in kwargs.items() if k not in drop}
            with session.suspended(), torch.no_grad():
                report = find_sink_dims(session.model, inputs, tau=self.cfg.tau)
            self.dims = tuple(report.dims)
            if not self.dims and not self._warned:
                self._warned = True
                warnings.warn("vlmfix VAR: no sink dimensions were found for this model (no massive activations at "
                              f"tau={self.cfg.tau}); VAR has no effect. Pass VAR(sink_dims=...) to set them.",
                              stacklevel=2)

    def contribute(self, call):
        sinks = self.sinks.get(call.layer)
        if sinks is None:
            return
        kv_len = call.key.shape[2]
        sinks = sinks[:, -kv_len:]
        call.classes = call.classes | (sinks.to(call.classes.dtype) * SINK)
        b, h = call.query.shape[:2]
        var_p = self._var_p
        if var_p is None or var_p.shape != (b, h) or var_p.device != call.query.device:
            var_p = self._var_p = torch.full((b, h), self.cfg.moved_fraction, dtype=torch.float32,
                                             device=call.query.device)
        if self.cfg.compat:  # the official code leaves a layer alone in a sample without any visual sink
            has_visual_sink = (sinks & ((call.classes & VISUAL) != 0)).any(dim=1)
            var_p = var_p * has_visual_sink.unsqueeze(1)
        call.params.key_class = call.classes
        call.params.var_p = var_p
        call.params.var_rho = self.cfg.rho
        call.params.var_min_mass = self.cfg.min_visual_mass
