"""The demo's method choices: paper defaults, slider ranges, and turning UI values into vlmfix configs.

Defaults are read from the config dataclasses themselves, so the sliders open at the papers' settings and can never
drift from what ``vlmfix.VAR()`` etc. mean.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass

from ..config import CARVE, VAR, VHR, DualStream


@dataclass(frozen=True)
class Knob:
    """One slider: which config field, its range, and a one-line meaning shown as the slider's info."""

    field: str
    label: str
    lo: float
    hi: float
    step: float
    info: str


KNOBS = {
    "var": (Knob("p", "p (share of sink attention moved)", 0.0, 1.0, 0.05,
                 "how much of the attention parked on sink tokens is given back to the image"),
            Knob("rho", "rho (image-centric head threshold)", 0.0, 1.0, 0.05,
                 "only heads that already look at the image this much are changed")),
    "vhr": (Knob("alpha", "alpha (head reinforcement)", 1.0, 4.0, 0.1,
                 "output scale of the heads most sensitive to the image"),),
    "dual_stream": (Knob("alpha", "alpha (local tokens)", 0.0, 2.0, 0.05,
                         "pre-softmax boost of the most salient image patches"),
                    Knob("beta", "beta (summary tokens)", 0.0, 2.0, 0.05,
                         "pre-softmax boost of the image's summary tokens"),
                    Knob("local_ratio", "local ratio", 0.05, 1.0, 0.05,
                         "share of image patches treated as local")),
}
CLASSES = {"var": VAR, "vhr": VHR, "dual_stream": DualStream}
TITLES = {"var": "VAR: visual attention sink redistribution", "vhr": "VHR: vision-aware head reinforcement",
          "dual_stream": "Dual-stream token emphasis", "carve": "CARVE: contrastive attention refinement"}
# Ticked when the page opens. VHR rather than VAR: VAR needs attention-sink channels, and the embedded testbed model
# has none it can find (VAR then changes nothing and says so), while VHR visibly changes the testbed's answers.
DEFAULT_METHODS = ("vhr",)


def default(method: str, field: str):
    """The paper default of ``method``'s ``field`` (the dataclass default)."""
    return {f.name: f.default for f in dataclasses.fields(CLASSES[method])}[field]


def carve_available() -> bool:
    """CARVE is a pipeline module that may not be installed in this build; the UI greys it out then."""
    try:
        return importlib.util.find_spec("vlmfix.pipelines.carve") is not None
    except ModuleNotFoundError:
        return False


def build_methods(enabled: dict[str, bool], values: dict[str, dict[str, float]], vhr_mode: str = "exact",
                  use_carve: bool = False) -> list:
    """Configs for the ticked methods; slider values override the defaults. CARVE, a pipeline, comes alone."""
    if use_carve:
        return [CARVE()]
    out = []
    for name, cls in CLASSES.items():
        if not enabled.get(name):
            continue
        kwargs = {k.field: float(values.get(name, {}).get(k.field, default(name, k.field))) for k in KNOBS[name]}
        if name == "vhr":
            kwargs["mode"] = vhr_mode or "exact"
        out.append(cls(**kwargs))
    return out


def describe(methods) -> str:
    """``VAR(p=0.6, rho=0.5) + VHR(alpha=2, exact)``: the non-default-looking summary shown above an answer."""
    parts = []
    for cfg in methods:
        name = getattr(cfg, "name", type(cfg).__name__.lower())
        knobs = KNOBS.get(name, ())
        shown = [f"{k.field}={getattr(cfg, k.field):g}" for k in knobs]
        if isinstance(cfg, VHR):
            shown.append(cfg.mode)
        parts.append(f"{type(cfg).__name__}({', '.join(shown)})")
    return " + ".join(parts) if parts else "no method"


__all__ = ["KNOBS", "CLASSES", "TITLES", "DEFAULT_METHODS", "default", "carve_available", "build_methods", "describe"]
