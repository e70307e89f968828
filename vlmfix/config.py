"""Method configurations: one dataclass per method, defaults = the papers' settings, every knob documented.

Layer sets left as ``None`` are resolved per model by ``resolve_layers`` (scaled by depth where the paper only gives
numbers for a 32-layer LLM). Configs are plain values: they hold no tensors and no model state, so one config can patch
many models and be written into an evaluation's protocol record (``asdict``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar


def _scaled(n_layers: int, layer: int, reference_depth: int = 32) -> int:
    return min(n_layers - 1, max(0, round(layer * n_layers / reference_depth)))


@dataclass(frozen=True)
class VAR:
    """Visual attention sink redistribution (Kang et al., ICLR 2025).

    p: fraction of the sink mass *moved* to visual non-sink tokens (paper 0.6; the official code moves 0.4).
    rho: minimum visual non-sink share of a row's visual mass for the head to count as image-centric (paper: 0.5 for
        hallucination benchmarks, 0.8 general VQA, 0.9 vision-centric; see ``VAR.preset``).
    tau: sink threshold on phi(x) = max_{d in sink_dims} |x_d| / RMS(x) of a layer's input hidden state (paper 20).
    min_visual_mass: a row's visual mass must reach this for the head to be considered (paper 0.2).
    sink_dims: massive-activation channels of the LLM; ``None`` = the known table, else discovery at patch time
        (``vlmfix.heads.find_sink_dims``).
    layers: decoder layers modified; ``None`` = 2 .. L-2 (the first two carry no sinks yet, the last is left alone).
    compat: reproduce the official code's behaviour (0.4 moved, strict ``>`` for tau, last layer included, a layer
        without a visual sink in a sample modifies nothing, sinks detected at prefill only) for A/B checks.
    detect_on_decode: also classify generated tokens as sinks (the paper applies phi to every token).
    """

    p: float = 0.6
    rho: float = 0.5
    tau: float = 20.0
    min_visual_mass: float = 0.2
    sink_dims: tuple[int, ...] | None = None
    layers: tuple[int, ...] | None = None
    compat: bool = False
    detect_on_decode: bool = True

    name: ClassVar[str] = "var"
    PRESETS: ClassVar[dict] = {"hallucination": 0.5, "general": 0.8, "vision": 0.9}

    def __post_init__(self):
        _check_range("VAR.p", self.p, 0.0, 1.0)
        _check_range("VAR.rho", self.rho, 0.0, 1.0)
        _check_range("VAR.min_visual_mass", self.min_visual_mass, 0.0, 1.0)
        if self.tau <= 0:
            raise ValueError(f"VAR.tau must be > 0, got {self.tau}")

    @classmethod
    def preset(cls, task: str, **overrides) -> "VAR":
        """``hallucination`` (rho 0.5), ``general`` (0.8) or ``vision`` (0.9), as the paper sets rho per task."""
        if task not in cls.PRESETS:
            raise ValueError(f"unknown VAR preset {task!r}; supported: {sorted(cls.PRESETS)}")
        return cls(rho=cls.PRESETS[task], **overrides)

    @property
    def moved_fraction(self) -> float:
        return 1.0 - self.p if self.compat else self.p

    def resolve_layers(self, n_layers: int) -> tuple[int, ...]:
        if self.layers is not None:
            return _checked_layers("VAR", self.layers, n_layers)
        last = n_layers if self.compat else n_layers - 1
        return tuple(range(min(2, n_layers), last))


@dataclass(frozen=True)
class VHR:
    """Vision-aware head reinforcement (He et al., ACL 2025).

    alpha: output scale of the selected heads (paper 2; 4 degenerates).
    layers: ``None`` = layer 1 plus the last 14 of a 32-layer LLM, scaled by depth.
    mode: ``exact`` runs the image-free prompt as an extra batch row in one extra prefill so each layer's head
        divergence (VHD) is measured layer by layer after earlier layers were reinforced (the paper's Alg. 1);
        ``fused`` approximates the image-free head output by attention restricted to the non-visual keys of the same
        pass (no extra pass).
    outlier_rule: zero the VHD of heads that are outliers (> mean + std) in both VHD and text-only output norm (Eq. 6).
    """

    alpha: float = 2.0
    layers: tuple[int, ...] | None = None
    mode: str = "exact"
    outlier_rule: bool = True

    name: ClassVar[str] = "vhr"
    MODES: ClassVar[tuple] = ("exact", "fused")

    def __post_init__(self):
        if self.mode not in self.MODES:
            raise ValueError(f"unknown VHR mode {self.mode!r}; supported: {list(self.MODES)}")
        if self.alpha <= 0:
            raise ValueError(f"VHR.alpha must be > 0, got {self.alpha}")

    def resolve_layers(self, n_layers: int) -> tuple[int, ...]:
        if self.layers is not None:
            return _checked_layers("VHR", self.layers, n_layers)
        n_last = max(1, round(14 * n_layers / 32))
        return tuple(sorted({min(1, n_layers - 1)} | set(range(n_layers - n_last, n_layers))))


@dataclass(frozen=True)
class DualStream:
    """Dual-stream visual token emphasis (Arif et al., arXiv 2501.12206, "PAINT").

    alpha: emphasis of local tokens, pre-softmax ``s + alpha*|s|`` on the current last query row (paper 0.7).
    beta: emphasis of summary tokens (paper 0.4).
    local_ratio: share of visual tokens that are local: top by CLS attention in the first ViT layer (paper 0.25).
    layers: LLM layers modified; ``None`` = 2 .. L-1 (paper: 2..31 of 32).
    summary_rule: summary tokens are Tukey outliers (> Q3 + 1.5 IQR) of CLS attention in the feature layer.
    Towers without a CLS token use the mean attention each patch *receives* in place of CLS attention (see
    ``vlmfix.heads.dual_stream``). PAI's logit contrast (gamma 1.1), which every reported run also used, is a
    separate, optional logits processor: ``vlmfix.ImageFreeContrast``.
    """

    alpha: float = 0.7
    beta: float = 0.4
    local_ratio: float = 0.25
    layers: tuple[int, ...] | None = None

    name: ClassVar[str] = "dual_stream"

    def __post_init__(self):
        _check_range("DualStream.local_ratio", self.local_ratio, 0.0, 1.0)
        if self.alpha < 0 or self.beta < 0:
            raise ValueError("DualStream.alpha and beta must be >= 0")

    def resolve_layers(self, n_layers: int) -> tuple[int, ...]:
        if self.layers is not None:
            return _checked_layers("DualStream", self.layers, n_layers)
        return tuple(range(min(2, n_layers), n_layers))


@dataclass(frozen=True)
class CARVE:
    """Contrastive attention refinement (Ge et al., arXiv 2509.06461): a three-pass pipeline, see ``vlmfix.carve``.

    general_prompt: the general query whose attention is divided out (paper App. D).
    layers: LLM layers whose last-row visual attention is fused; ``None`` = 20..25 of a 32-layer LLM, scaled by depth.
    lam: regulariser of the contrast A_Q / (A_G + lam) (code 1e-8).
    top_p: fraction of pixels kept by the threshold (paper best 0.4; code 0.2).
    max_regions: connected regions kept, ranked by attention sum (paper best K=2, a maximum).
    step_mode: ``last_token`` (paper's t_end, best), ``all_steps`` (T_full, weights t+1), ``first_token`` (t_start).
    final_input: ``refined`` (paper: only the refined image) or ``both`` (official code: [original, refined]).
    max_new_tokens: generation budget of each pass (code 32).
    answer_suffix: appended to both queries, as in the official code.
    """

    general_prompt: str = "Write a general description of the image."
    layers: tuple[int, ...] | None = None
    lam: float = 1e-8
    top_p: float = 0.4
    max_regions: int = 2
    step_mode: str = "last_token"
    final_input: str = "refined"
    max_new_tokens: int = 32
    answer_suffix: str = "Answer the question using a single word or phrase."

    name: ClassVar[str] = "carve"
    STEP_MODES: ClassVar[tuple] = ("last_token", "all_steps", "first_token")

    def __post_init__(self):
        if self.step_mode not in self.STEP_MODES:
            raise ValueError(f"unknown CARVE step_mode {self.step_mode!r}; supported: {list(self.STEP_MODES)}")
        if self.final_input not in ("refined", "both"):
            raise ValueError("CARVE.final_input must be 'refined' or 'both'")
        _check_range("CARVE.top_p", self.top_p, 0.0, 1.0)
        if self.max_regions < 1:
            raise ValueError("CARVE.max_regions must be >= 1")

    def resolve_layers(self, n_layers: int) -> tuple[int, ...]:
        if self.layers is not None:
            return _checked_layers("CARVE", self.layers, n_layers)
        lo, hi = _scaled(n_layers, 20), _scaled(n_layers, 25)
        return tuple(range(lo, max(lo, hi) + 1))


METHODS = {"var": VAR, "vhr": VHR, "dual_stream": DualStream}
ALIASES = {"dual-stream": "dual_stream", "dualstream": "dual_stream", "paint": "dual_stream"}


PIPELINES = {"carve": CARVE}


def config_from(spec) -> VAR | VHR | DualStream | CARVE:
    """Any method's config, CARVE included, from a name (``"var"``), a dict (``{"method": "var", "p": 0.6}``) or a
    config instance; unknown names and options are errors naming what is supported."""
    known_kinds = {**METHODS, **PIPELINES}
    if isinstance(spec, tuple(known_kinds.values())):
        return spec
    if isinstance(spec, str):
        key = ALIASES.get(spec.lower(), spec.lower())
        if key not in known_kinds:
            raise ValueError(f"unknown method {spec!r}; supported: {sorted(METHODS)} (and 'carve' via vlmfix.carve)")
        return known_kinds[key]()
    if isinstance(spec, dict):
        spec = dict(spec)
        name = spec.pop("method", None)
        if name is None:
            raise ValueError("a method dict needs a 'method' key, e.g. {'method': 'var', 'p': 0.6}")
        key = ALIASES.get(str(name).lower(), str(name).lower())
        if key not in known_kinds:
            raise ValueError(f"unknown method {name!r}; supported: {sorted(known_kinds)}")
        cls = known_kinds[key]
        known = {f.name for f in dataclasses.fields(cls)}
        bad = set(spec) - known
        if bad:
            raise ValueError(f"unknown {cls.__name__} options {sorted(bad)}; supported: {sorted(known)}")
        spec = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
        return cls(**spec)
    raise TypeError(f"cannot make a method from {type(spec).__name__}: pass a name, a dict or a config")


def method_from(spec) -> VAR | VHR | DualStream:
    """An attention patch's config (see ``config_from``); CARVE, a multi-pass pipeline, is refused here."""
    cfg = config_from(spec)
    if isinstance(cfg, CARVE):
        raise TypeError("CARVE is a multi-pass pipeline, not an attention patch: call vlmfix.carve(model, processor, "
                        "image, question, config)")
    return cfg


def config_record(cfg) -> dict:
    """A JSON-ready record of a config (method name + every field) for evaluation protocols."""
    return {"method": cfg.name, **dataclasses.asdict(cfg)}


def _check_range(name, value, lo, hi):
    if not (lo <= value <= hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")


def _checked_layers(method, layers, n_layers):
    out = tuple(sorted({int(i) if i >= 0 else n_layers + int(i) for i in layers}))
    bad = [i for i in out if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"{method} layers {bad} out of range for a {n_layers}-layer language model")
    return out


__all__ = ["VAR", "VHR", "DualStream", "CARVE", "method_from", "config_from", "config_record", "METHODS"]

