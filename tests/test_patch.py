"""The patch contract on tiny random models of every family: exactness at zero strength, exact unpatch, padding and
KV-cache invariance under every method, composition, and clear errors."""

from __future__ import annotations

import warnings

import pytest
import torch

import vlmfix
from families import BUILDERS

FAMILIES = list(BUILDERS)

# strengths that do something on tiny random models: sinks need a low tau (random weights have no massive
# activations), dual-stream needs a ratio that selects at least one of a handful of visual tokens
ACTIVE = {
    "var": lambda: vlmfix.VAR(p=0.6, rho=0.2, min_visual_mass=0.05, sink_dims=(0, 1, 2), tau=1.2),
    "vhr_exact": lambda: vlmfix.VHR(alpha=2.0, mode="exact"),
    "vhr_fused": lambda: vlmfix.VHR(alpha=2.0, mode="fused"),
    "dual_stream": lambda: vlmfix.DualStream(alpha=0.7, beta=0.4, local_ratio=0.5),
}
ZERO = {
    "var": lambda: vlmfix.VAR(p=0.0, sink_dims=(0, 1, 2), tau=1.5),
    "vhr_exact": lambda: vlmfix.VHR(alpha=1.0, mode="exact"),
    "vhr_fused": lambda: vlmfix.VHR(alpha=1.0, mode="fused"),
    "dual_stream": lambda: vlmfix.DualStream(alpha=0.0, beta=0.0),
}
COMBOS = {name: [make] for name, make in ACTIVE.items()}
COMBOS["all"] = [ACTIVE["dual_stream"], ACTIVE["var"], ACTIVE["vhr_exact"]]

_CACHE = {}


def tiny(family):
    if family not in _CACHE:
        _CACHE[family] = BUILDERS[family]()
    t = _CACHE[family]
    assert not vlmfix.is_patched(t.model)
    return t


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_strength_equals_sdpa(family):
    t = tiny(family)
    inputs = t.inputs(((3, 4), (1, 2)))
    ref = logits(t.model, inputs)
    for name, make in ZERO.items():
        with vlmfix.patched(t.model, make()):
            out = logits(t.model, inputs)
        assert (out - ref).abs().max().item() <= 1e-5, name
    with vlmfix.patched(t.model, *[make() for make in ZERO.values() if make is not ZERO["vhr_fused"]]):
        out = logits(t.model, inputs)
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_active_methods_change_logits_and_unpatch_is_exact(family):
    t = tiny(family)
    inputs = t.inputs(((3, 4), (1, 2)))
    ref = logits(t.model, inputs)
    hooks_before = _hook_count(t.model)
    impl_before = {k: getattr(t.model.config, k)._attn_implementation for k in t.model.config.sub_configs}
    for name, makes in COMBOS.items():
        if name == "dual_stream" and family in ("idefics3", "smolvlm"):
            continue  # two visual tokens: no summary outlier and one local token at most; covered below
        vlmfix.patch(t.model, *[m() for m in makes])
        out = logits(t.model, inputs)
        vlmfix.unpatch(t.model)
        assert (out - ref).abs().max().item() > 1e-4, f"{name} had no effect"
        after = logits(t.model, inputs)
        assert torch.equal(after, ref), f"{name}: unpatched logits are not bit-identical"
        assert _hook_count(t.model) == hooks_before
        assert not any(hasattr(m, "_vlmfix_layer") or hasattr(m, "_vlmfix_vision") for m in t.model.modules())
        assert {k: getattr(t.model.config, k)._attn_implementation for k in t.model.config.sub_configs} == impl_before


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("combo", list(COMBOS))
def test_left_padded_batch_equals_rows_alone(family, combo):
    t = tiny(family)
    batch = t.inputs(((3, 4), (1, 2)), seed=3)
    rows = [t.inputs(((3, 4),), seed=3), None]
    # the second row alone: rebuild it with the same random text by slicing the padded batch
    second = {k: v for k, v in batch.items()}
    keep = batch["attention_mask"][1].bool()
    alone = {"input_ids": batch["input_ids"][1:, keep], "attention_mask": batch["attention_mask"][1:, keep]}
    for k, v in batch.items():
        if k in alone:
            continue
        if k in ("token_type_ids", "mm_token_type_ids"):
            alone[k] = v[1:, keep]
        else:
            alone[k] = _row_slice(t.family, k, v, 1)
    first = {k: (v[:1, (batch["attention_mask"][0] > 0)] if k in ("input_ids", "attention_mask", "token_type_ids",
                                                                     "mm_token_type_ids")
                 else _row_slice(t.family, k, v, 0)) for k, v in second.items()}
    rows = [first, alone]
    with vlmfix.patched(t.model, *[m() for m in COMBOS[combo]]):
        both = logits(t.model, batch)
        for i, row in enumerate(rows):
            single = logits(t.model, row)
            width = single.shape[1]
            torch.testing.assert_close(both[i, -width:], single[0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("combo", list(COMBOS))
def test_generate_same_with_and_without_cache(family, combo):
    t = tiny(family)
    inputs = t.inputs(((3, 4), (2, 2)), seed=5)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with vlmfix.patched(t.model, *[m() for m in COMBOS[combo]]):
        with torch.no_grad():
            cached = t.model.generate(**inputs, use_cache=True, **kw)
            uncached = t.model.generate(**inputs, use_cache=False, **kw)
    assert torch.equal(cached, uncached)


def test_prompt_without_image_is_unpatched_and_warns_once():
    t = tiny("llava")
    inputs = t.inputs(((3, 4),), with_image=False)
    ref = logits(t.model, inputs)
    with vlmfix.patched(t.model, ACTIVE["var"](), ACTIVE["dual_stream"](), ACTIVE["vhr_exact"]()):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = logits(t.model, inputs)
            second = logits(t.model, inputs)
    assert torch.equal(first, ref) and torch.equal(second, ref)
    assert sum("without image tokens" in str(w.message) for w in caught) == 1


def test_unsupported_model_error_names_type_and_families():
    import transformers as tf

    model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                               num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(vlmfix.UnsupportedModelError) as err:
        vlmfix.patch(model, "var")
    msg = str(err.value)
    assert "'llama'" in msg and "llava" in msg and "qwen2_vl" in msg and "gemma3" in msg and "adapter" in msg


def test_double_patch_errors_unless_replace():
    t = tiny("llava")
    vlmfix.patch(t.model, ACTIVE["var"]())
    try:
        with pytest.raises(RuntimeError, match="already patched"):
            vlmfix.patch(t.model, "vhr")
        handle = vlmfix.patch(t.model, ACTIVE["vhr_fused"](), replace=True)
        assert [type(c).__name__ for c in handle.methods] == ["VHR"]
    finally:
        vlmfix.unpatch(t.model)
    with pytest.raises(RuntimeError, match="not patched"):
        vlmfix.unpatch(t.model)


def test_patched_context_restores_on_exception():
    t = tiny("llava")
    inputs = t.inputs()
    ref = logits(t.model, inputs)
    with pytest.raises(ZeroDivisionError):
        with vlmfix.patched(t.model, ACTIVE["var"]()):
            1 / 0
    assert not vlmfix.is_patched(t.model)
    assert torch.equal(logits(t.model, inputs), ref)


def test_bad_method_specs():
    t = tiny("llava")
    with pytest.raises(ValueError, match="unknown method"):
        vlmfix.patch(t.model, "opera")
    with pytest.raises(ValueError, match="once per patch"):
        vlmfix.patch(t.model, "var", vlmfix.VAR(p=0.3))
    with pytest.raises(ValueError, match="unknown VAR options"):
        vlmfix.patch(t.model, {"method": "var", "beta": 0.6})
    with pytest.raises(TypeError, match="vlmfix.carve"):
        vlmfix.patch(t.model, vlmfix.CARVE())
    with pytest.raises(ValueError, match="out of range"):
        vlmfix.patch(t.model, vlmfix.VAR(layers=(0, 99)))
    assert not vlmfix.is_patched(t.model)


def _hook_count(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def _row_slice(family, key, value, row):
    """Pixel kwargs for one batch row: each family packs images differently."""
    if key == "pixel_values" and family in ("qwen2_vl", "qwen2_5_vl"):
        return value[row * 16:(row + 1) * 16]
    if value.dim() == 0:
        return value
    return value[row:row + 1]
