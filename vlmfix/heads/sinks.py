"""Visual attention sinks (VAR, Kang et al., ICLR 2025): which tokens are sinks, and along which channels.

A sink token is one whose residual stream carries a *massive activation*: a few fixed channels ``D_sink`` of the base
LLM hold a value tens of times the token's RMS. VAR classifies token j as a sink at layer l when

    phi(x) = max_{d in D_sink} |x_d| / RMS(x)  >=  tau  (tau = 20),    RMS(x) = sqrt(mean_d x_d^2),

with x the hidden state *entering* layer l (before the layer's input norm, and without its learned weight). The
channels are a property of the base LLM and survive multimodal fine-tuning, so a small table covers the published
models; ``find_sink_dims`` discovers them for anything else from one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

RMS_EPS = 1e-6  # the official code computes x * rsqrt(mean(x^2) + 1e-6); it only matters for all-zero states


@dataclass(frozen=True)
class SinkDimsEntry:
    """One row of the table: the text model it applies to and its massive-activation channels."""

    dims: tuple[int, ...]
    model_types: tuple[str, ...]
    hidden_size: int
    num_hidden_layers: int
    vocab_sizes: tuple[int, ...] | None = None  # None: any vocabulary
    source: str = "VAR paper, App. A.1"


# Matching is on the *text* model's architecture numbers, never on a checkpoint name: a LLaMA-3 based LLaVA has the
# same hidden size and depth as LLaMA-2-7B but a 128k vocabulary and other channels, hence the vocabulary check.
KNOWN_SINK_DIMS: dict[str, SinkDimsEntry] = {
    "llava-1.5-7b": SinkDimsEntry((1415, 2533), ("llama", "llava_llama"), 4096, 32, (32000, 32064)),
    "llava-1.5-13b": SinkDimsEntry((2100, 4743), ("llama", "llava_llama"), 5120, 40, (32000, 32064)),
    "qwen2-vl-7b": SinkDimsEntry((458, 2570), ("qwen2_vl_text", "qwen2_vl"), 3584, 28, (152064,)),
    "internvl2-8b": SinkDimsEntry((3584,), ("internlm2",), 4096, 32, (92544, 92553)),
}


def _text_config(config):
    # InternVL2's remote-code config nests the LLM under ``llm_config``, which ``get_text_config`` does not know.
    if getattr(config, "llm_config", None) is not None:
        return config.llm_config
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def known_sink_dims(config) -> tuple[int, ...] | None:
    """The published sink channels of the model's LLM, or ``None`` if the architecture is not in the table."""
    text = _text_config(config)
    model_type = getattr(text, "model_type", None)
    hidden = getattr(text, "hidden_size", None)
    depth = getattr(text, "num_hidden_layers", None)
    vocab = getattr(text, "vocab_size", None)
    for entry in KNOWN_SINK_DIMS.values():
        if (model_type in entry.model_types and hidden == entry.hidden_size and depth == entry.num_hidden_layers
                and (entry.vocab_sizes is None or vocab is None or vocab in entry.vocab_sizes)):
            return entry.dims
    return None


def _check_hidden(hidden: torch.Tensor, dims: Sequence[int]) -> list[int]:
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        shape = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise ValueError(f"hidden must have shape (B, T, D), got {shape}")
    dims = [int(d) for d in dims]
    if not dims:
        raise ValueError("dims must name at least one channel")
    size = hidden.shape[-1]
    bad = [d for d in dims if not 0 <= d < size]
    if bad:
        raise ValueError(f"sink dims {bad} out of range for hidden size {size}")
    return dims


def _ratios(hidden: torch.Tensor) -> torch.Tensor:
    """|x_d| / RMS(x) for every channel, in fp32 (bf16 squares of massive values lose the small channels)."""
    x = hidden.float()
    return x.abs() * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + RMS_EPS)


def sink_scores(hidden: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """phi per token: max over ``dims`` of |x_d| / RMS(x); hidden (B, T, D) -> (B, T) float32.

    ``dims`` may be a long tensor on ``hidden``'s device (checked once by the caller): then no host-to-device copy
    happens, which matters when this runs in every layer of every decode step.
    """
    if not isinstance(dims, torch.Tensor):
        dims = torch.tensor(_check_hidden(hidden, dims), dtype=torch.long, device=hidden.device)
    x = hidden.float()
    inv_rms = torch.rsqrt(x.pow(2).mean(dim=-1) + RMS_EPS)
    return x.index_select(-1, dims).abs().amax(dim=-1) * inv_rms


def detect_sinks(hidden: torch.Tensor, dims: Sequence[int], tau: float = 20.0, strict: bool = False) -> torch.Tensor:
    """Sink tokens, bool (B, T): phi >= tau as in the paper, or phi > tau (``strict``) as in the official code."""
    phi = sink_scores(hidden, dims)
    return phi > tau if strict else phi >= tau


class SinkBitWriter:
    """``detect_sinks`` for the few new tokens of a decode step, written as a class bit straight into an int32 buffer.

    It runs in every VAR layer for every generated token, where each ATen op is a kernel launch paid on the host, so
    it takes 7 ops (``index_select``, two ``vector_norm``, ``hypot``, ``mul_``, the comparison, ``where(out=)``)
    against 9 for ``detect_sinks`` (``pow``, ``mean``, ``add``, ``rsqrt``, ``index_select``, ``abs``, ``amax``,
    ``mul``, the comparison; 10 with the ``float`` of a bf16 state) plus 3 to turn its bool mask into bits
    (``to(int32)``, ``* bit``, a copy). The test is the same inequality, rearranged:

        max|x_d| * rsqrt(mean(x^2) + eps) >= tau   <=>   max|x_d| * sqrt(D) / tau >= hypot(||x||_2, sqrt(D * eps))

    ``eps`` stays under the root (``RMS_EPS``, as in ``detect_sinks``; flooring the RMS at sqrt(eps) instead would
    change the answer for all-but-zero states), so the two agree everywhere up to fp32 rounding, i.e. except for a
    phi within a few ulps of tau. The prefill keeps ``detect_sinks`` itself: its mask is bit-exact with
    ``sink_scores`` (a tau set *at* a phi value behaves as documented there), and it runs once per sequence.

    The norms are taken in fp32, as in ``sink_scores``, through ``vector_norm``'s ``dtype``: CUDA's reductions read
    a bf16 state directly (7 kernels per call for fp32 and bf16 alike on the H200; a ``float()`` copy first would be
    an eighth). The channel index and the two int32 scalars that ``where`` writes are device tensors made once here,
    so a call copies nothing from the host.
    """

    def __init__(self, dims: torch.Tensor, tau: float, hidden_size: int, bit: int, strict: bool = False):
        """``dims``: long tensor of channels, on the states' device and already checked against ``hidden_size``."""
        device = dims.device
        self.dims = dims
        self.scale = hidden_size ** 0.5 / tau
        self.eps_norm_value = (hidden_size * RMS_EPS) ** 0.5
        self.eps_norm = torch.tensor(self.eps_norm_value, dtype=torch.float32, device=device)
        self.strict = strict
        self.on = torch.tensor(bit, dtype=torch.int32, device=device)
        self.off = torch.tensor(0, dtype=torch.int32, device=device)
        self.compare = torch.gt if strict else torch.ge

    def __call__(self, hidden: torch.Tensor, out: torch.Tensor) -> None:
        """Write ``bit`` (sink) or 0 for each token of ``hidden`` (B, T, D) into ``out`` (B, T) int32, in place."""
        peak = torch.linalg.vector_norm(hidden.index_select(-1, self.dims), ord=float("inf"), dim=-1,
                                        dtype=torch.float32)
        norm = torch.linalg.vector_norm(hidden, dim=-1, dtype=torch.float32)
        torch.where(self.compare(peak.mul_(self.scale), torch.hypot(norm, self.eps_norm)), self.on, self.off,
                    out=out)


@dataclass
class SinkDimsReport:
    """What ``find_sink_dims`` saw.

    dims: the chosen sink channels, strongest first.
    layers: the decoder layers whose input states were scanned.
    per_layer: layer -> {channel: (tokens with ratio >= tau, largest ratio)} for every channel over tau there.
    scores: channel -> sum over layers of its largest ratio (frequency x magnitude), for every candidate channel.
    layer_span: channel -> the layers where it was over tau.
    secondary: candidates not kept in ``dims`` (e.g. sinks that live only in middle layers), strongest first.
    sink_tokens: layer -> bool (B, T), tokens with phi >= tau under ``dims``.
    """

    dims: tuple[int, ...]
    tau: float
    layers: tuple[int, ...]
    per_layer: dict[int, dict[int, tuple[int, float]]] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    layer_span: dict[int, tuple[int, ...]] = field(default_factory=dict)
    secondary: tuple[int, ...] = ()
    sink_tokens: dict[int, torch.Tensor] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"sink dims {list(self.dims)} (tau {self.tau:g}, layers {self.layers[0]}..{self.layers[-1]})"
                 if self.layers else f"sink dims {list(self.dims)}"]
        for d in self.dims + self.secondary:
            span = self.layer_span.get(d, ())
            tag = "" if d in self.dims else " (secondary)"
            lines.append(f"  dim {d}{tag}: score {self.scores.get(d, 0.0):.1f}, {len(span)} layers {list(span)}")
        return "\n".join(lines)


def sink_dims_from_hidden_states(hidden_states: Sequence[torch.Tensor], *, tau: float = 20.0,
                                 layers: Sequence[int] | None = None, max_dims: int = 4, min_layers: int = 2,
                                 attention_mask: torch.Tensor | None = None) -> SinkDimsReport:
    """Massive-activation channels from the states *entering* each decoder layer.

    ``hidden_states[l]`` must be the input of decoder layer l, as in HF's ``output_hidden_states`` (entry 0 = the
    embeddings; a trailing entry after the final norm is fine: it is only scanned if ``layers`` names it). Default
    layers: 2 .. len-2, because massive activations form in the first two layers and the last entry is normalised.
    A channel is a candidate when some (unpadded) token reaches ratio >= tau in at least ``min_layers`` scanned layers
    ("many layers" rules out one-off outliers); candidates are ranked by the sum over layers of their largest ratio.
    """
    if max_dims < 1 or min_layers < 1:
        raise ValueError("max_dims and min_layers must be >= 1")
    n = len(hidden_states)
    if layers is None:
        last = max(n - 1, 0)
        layers = range(min(2, last), last)
    layers = tuple(int(i) for i in layers)
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise ValueError(f"layers {bad} out of range for {n} hidden states")
    per_layer: dict[int, dict[int, tuple[int, float]]] = {}
    scores: dict[int, float] = {}
    span: dict[int, list[int]] = {}
    for layer in layers:
        h = hidden_states[layer]
        _check_hidden(h, [0])
        r = _ratios(h)
        if attention_mask is not None:
            r = r * attention_mask.to(device=r.device, dtype=r.dtype).unsqueeze(-1)
        hits = r >= tau
        counts = hits.flatten(0, 1).sum(dim=0)
        peak = r.flatten(0, 1).amax(dim=0)
        stats = {}
        for d in torch.nonzero(counts).flatten().tolist():
            stats[d] = (int(counts[d]), float(peak[d]))
            span.setdefault(d, []).append(layer)
        per_layer[layer] = stats
    for d, ls in span.items():
        if len(ls) >= min_layers:
            scores[d] = sum(per_layer[layer][d][1] for layer in ls)
    ranked = sorted(scores, key=lambda d: (-scores[d], d))
    dims = tuple(ranked[:max_dims])
    report = SinkDimsReport(dims=dims, tau=float(tau), layers=layers, per_layer=per_layer, scores=scores,
                            layer_span={d: tuple(v) for d, v in span.items()}, secondary=tuple(ranked[max_dims:]))
    if dims:
        for layer in layers:
            sinks = detect_sinks(hidden_states[layer], dims, tau)
            if attention_mask is not None:
                sinks &= attention_mask.to(sinks.device).bool()
            report.sink_tokens[layer] = sinks
    return report


@torch.no_grad()
def find_sink_dims(model, inputs: Mapping[str, torch.Tensor], *, tau: float = 20.0,
                   layers: Sequence[int] | None = None, max_dims: int = 4, min_layers: int = 2) -> SinkDimsReport:
    """Discover a model's sink channels from one unpatched forward pass on ``inputs`` (a dict for ``model(**inputs)``).

    Use an input with an image and a few dozen text tokens: the BOS token and image background tokens carry the
    massive activations. Padded positions (``inputs["attention_mask"] == 0``) are ignored.
    """
    out = model(**inputs, output_hidden_states=True, return_dict=True)
    hidden_states = getattr(out, "hidden_states", None)
    if hidden_states is None:
        raise RuntimeError(f"{type(model).__name__} returned no hidden_states with output_hidden_states=True")
    mask = inputs.get("attention_mask") if hasattr(inputs, "get") else None
    if mask is not None and (mask.dim() != 2 or tuple(mask.shape) != tuple(hidden_states[0].shape[:2])):
        mask = None  # e.g. a 4-D mask, or a multimodal model whose LM sequence differs from input_ids
    return sink_dims_from_hidden_states(hidden_states, tau=tau, layers=layers, max_dims=max_dims,
                                        min_layers=min_layers, attention_mask=mask)
