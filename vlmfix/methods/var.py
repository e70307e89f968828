"""VAR at runtime: sink tokens per layer from the residual stream, then the kernel's adaptive redistribution.

Sinks are found by a forward pre-hook on each VAR layer (phi on the hidden state *entering* the layer, as the paper
defines it), stored per layer for every position of the sequence in an int32 buffer of SINK bits, which the kernel
ORs into the shared key classes (``kernels.reference.SinkBits``). The prefill tests every prompt token with
``detect_sinks``. A decode step of one token only reserves the token's column and hands the hidden state to the
kernel, which tests it and writes the bit (no host op: this runs in every VAR layer for every generated token);
several new tokens at once go through ``SinkBitWriter``, the same inequality on the host. The row/head test and the
redistribution itself are the kernel's ``var_p`` switch (see ``kernels/reference.py``).
"""

from __future__ import annotations

import warnings

import torch

from ..heads import SinkBitWriter, detect_sinks, find_sink_dims, known_sink_dims
from ..kernels import SINK, VISUAL
from ..kernels.reference import SinkBits
from .base import MethodRuntime, PerHeadTable


class VarRuntime(MethodRuntime):
    contribute_priority = 1

    def __init__(self, cfg, adapter):
        super().__init__(cfg, adapter)
        self.dims = tuple(cfg.sink_dims) if cfg.sink_dims is not None else known_sink_dims(adapter.config)
        hidden = adapter.text_config().hidden_size
        if self.dims is not None and any(not 0 <= d < hidden for d in self.dims):
            raise ValueError(f"VAR sink_dims {self.dims} out of range for hidden size {hidden}")
        # per layer: an int32 buffer holding SINK or 0 per position (grown by doubling), and its filled length;
        # decode steps write one column in place instead of re-concatenating the layer's whole history
        self._sink_bits: dict[int, torch.Tensor] = {}
        self._sink_len: dict[int, int] = {}
        self._warned = False
        self._var_p = PerHeadTable(lambda query: torch.full(query.shape[:2], cfg.moved_fraction, dtype=torch.float32,
                                                            device=query.device))
        # the sink test with its device tensors (channels, bit values) per (device, width, dims): no host copy per
        # call, also when the layers of a model sit on several devices
        self._writers: dict[tuple, SinkBitWriter] = {}
        # per layer: (hidden state, sink test) of a one-token decode step whose bit the kernel is to decide
        self._pending: dict[int, tuple] = {}
        self._kernel_tests = cfg.detect_on_decode and not cfg.compat

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
            writer = self._writer_for(hidden)
            if seq.new_sequence:
                sinks = detect_sinks(hidden, writer.dims, self.cfg.tau, strict=self.cfg.compat)
                self._reserve(idx, hidden, fresh=True)
                torch.where(sinks, writer.on, writer.off, out=self._sink_bits[idx][:, :hidden.shape[1]])
            elif idx in self._sink_bits:
                start = self._reserve(idx, hidden)
                n = hidden.shape[1]
                if self._kernel_tests:
                    if n == 1:  # the kernel tests the token and writes its bit
                        self._pending[idx] = (hidden, writer)
                    else:
                        writer(hidden, out=self._sink_bits[idx][:, start:start + n])
                # else the new tokens are no sinks: their columns are still 0
            return None

        return pre_hook

    def _reserve(self, idx, hidden, fresh=False) -> int:
        """Appends columns for the tokens of ``hidden`` to the layer's SINK-bit buffer (from 0 for a new sequence);
        returns the first one.

        Buffers are made with zeros and grown by doubling, and only the reserved columns are ever written, so every
        column past the filled length is 0.
        """
        n = hidden.shape[1]
        start = 0 if fresh else self._sink_len[idx]
        buf = None if fresh else self._sink_bits[idx]
        if buf is None or start + n > buf.shape[1]:
            grown = torch.zeros(hidden.shape[0], 2 * (start + n) + 16, dtype=torch.int32, device=hidden.device)
            if buf is not None:
                grown[:, :start] = buf[:, :start]
            buf = self._sink_bits[idx] = grown
        self._sink_len[idx] = start + n
        return start

    def sink_mask(self, layer: int) -> torch.Tensor | None:
        """Bool (B, T): the sink tokens found at ``layer`` for every position of the current sequence."""
        if layer not in self._sink_bits:
            return None
        return self._sink_bits[layer][:, : self._sink_len[layer]] != 0

    @property
    def sinks(self) -> dict[int, torch.Tensor]:
        """Every VAR layer's sink mask (bool (B, T)) for the current sequence: a diagnostic view."""
        return {layer: self.sink_mask(layer) for layer in self._sink_bits}

    def _writer_for(self, hidden):
        """The sink test for ``hidden``'s device and width and the current sink dims, made once for each."""
        key = (hidden.get_device(), hidden.shape[-1], self.dims)
        writer = self._writers.get(key)
        if writer is None:
            dims = torch.tensor(self.dims, dtype=torch.long, device=hidden.device)
            writer = self._writers[key] = SinkBitWriter(dims, self.cfg.tau, hidden.shape[-1], SINK,
                                                        strict=self.cfg.compat)
        return writer

    def start_sequence(self, session, kwargs):
        self._sink_bits, self._sink_len, self._pending = {}, {}, {}
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
        bits = self._sink_bits.get(call.layer)
        if bits is None:
            return
        kv_len = call.key.shape[2]
        first = self._sink_len[call.layer] - kv_len
        var_p = self._var_p(call.query)
        if self.cfg.compat:  # the official code leaves a layer alone in a sample without any visual sink
            call.classes = call.classes | bits[:, first:first + kv_len]
            has_visual_sink = ((call.classes & (SINK | VISUAL)) == (SINK | VISUAL)).any(dim=1)
            var_p = var_p * has_visual_sink.unsqueeze(1)
        else:
            pending = self._pending.pop(call.layer, None)
            if pending is None:
                call.params.sink_bits = SinkBits(bits, first)
            else:
                hidden, writer = pending
                call.params.sink_bits = SinkBits(bits, first, hidden, writer.dims, writer.scale,
                                                 writer.eps_norm_value, writer.strict)
        call.params.key_class = call.classes
        call.params.var_p = var_p
        call.params.var_rho = self.cfg.rho
        call.params.var_min_mass = self.cfg.min_visual_mass
