"""Method sets for a run: ``--method`` names, ``--method-config`` JSON files and ``--compare`` lists.

A run evaluates one or more *method sets* (``baseline`` = unpatched, ``var``, ``var+vhr``, ...) one after the other on
the same model and questions, so a comparison never mixes protocols. Patching goes through ``vlmfix.patch`` /
``vlmfix.unpatch``, imported only when a set is not the baseline.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from .errors import EvalInputError

BASELINE = "baseline"


def _config(spec):
    from vlmfix.config import config_from

    try:
        return config_from(spec)
    except (ValueError, TypeError) as exc:
        raise EvalInputError(f"bad method {spec!r}: {exc}") from None


def load_method_configs(paths) -> list:
    """Configs from JSON files holding one ``{"method": ..., knobs...}`` object or a list of them."""
    out = []
    for p in paths or ():
        p = Path(p)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise EvalInputError(f"method config not found: {p}") from None
        except json.JSONDecodeError as exc:
            raise EvalInputError(f"{p} is not valid JSON ({exc.msg}); expected {{\"method\": \"var\", ...}} "
                                 "or a list of such objects") from None
        for spec in data if isinstance(data, list) else [data]:
            if not isinstance(spec, dict):
                raise EvalInputError(f"{p}: expected method objects like {{\"method\": \"var\", \"p\": 0.6}}")
            out.append(_config(spec))
    return out


def _resolve(names, configs) -> list:
    by_name = {c.name: c for c in configs}
    cfgs = []
    for n in names:
        if n.lower() == BASELINE:
            continue
        cfg = _config(n)
        cfgs.append(by_name.pop(cfg.name, cfg))
    return cfgs


def method_sets(methods=(), config_paths=(), compare=(), default_compare=()) -> list[tuple[str, list]]:
    """``[(label, configs)]``. ``--compare`` entries are ``+``-joined names; configs from files replace the defaults
    of the same method (and are added to a single run when not named)."""
    configs = load_method_configs(config_paths)
    if compare or (not methods and not configs and default_compare):
        out = []
        for entry in compare or default_compare:
            names = [n.strip() for n in entry.split("+") if n.strip()]
            cfgs = _resolve(names, configs)
            out.append((label_of(cfgs), cfgs))
        return out
    cfgs = _resolve(list(methods), list(configs))
    named = {c.name for c in cfgs}
    cfgs += [c for c in configs if c.name not in named]
    return [(label_of(cfgs), cfgs)]


def label_of(cfgs) -> str:
    return "+".join(c.name for c in cfgs) or BASELINE


def split_carve(cfgs):
    """(attention patches, CARVE config or None): CARVE is a pipeline run per sample on the (patched) model."""
    from vlmfix.config import CARVE

    carve = [c for c in cfgs if isinstance(c, CARVE)]
    return [c for c in cfgs if not isinstance(c, CARVE)], (carve[0] if carve else None)


@contextlib.contextmanager
def patched(model, cfgs):
    """Apply a method set for the duration of a run and restore the original model afterwards."""
    cfgs, _ = split_carve(cfgs)
    if not cfgs:
        yield model
        return
    import vlmfix

    patch, unpatch = getattr(vlmfix, "patch", None), getattr(vlmfix, "unpatch", None)
    if patch is None or unpatch is None:
        raise EvalInputError("vlmfix.patch/unpatch are not available in this installation; only the baseline "
                             "can be evaluated")
    patch(model, *cfgs)
    try:
        yield model
    finally:
        unpatch(model)
