"""Each method's *selection* inside a real model equals an independent implementation of the paper's rule:
VAR's sinks from the residual stream, VHR's layer-by-layer vision-aware heads (Alg. 1 via o_proj hooks), and
dual-stream's local/summary tokens from CLS attention of an eager vision tower."""

from __future__ import annotations

import inspect

import pytest
import torch

import vlmfix
from families import BUILDERS
from vlmfix.kernels import LOCAL, SINK, SUMMARY, VISUAL


def _runtime(model, kind):
    session = vlmfix.get_patch(model).session
    return next(rt for rt in session.runtimes if type(rt).__name__ == kind)


def _phi64(x, dims):
    """The paper's phi of fp64 states: max over the sink dims of |x_d| / RMS(x), the RMS with eps as in the code."""
    return (x[..., list(dims)].abs() / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()).amax(-1)


def test_var_sinks_are_phi_of_each_layer_input():
    t = BUILDERS["llava"]()
    inputs = t.inputs(((3, 4), (1, 2)))
    cfg = vlmfix.VAR(sink_dims=(0, 1, 2), tau=1.5, rho=0.2, min_visual_mass=0.05)
    with vlmfix.patched(t.model, cfg):
        with torch.no_grad():
            out = t.model(**inputs, output_hidden_states=True)
        runtime = _runtime(t.model, "VarRuntime")
        layers = cfg.resolve_layers(len(t.model.get_decoder().layers))
        sinks = {layer: runtime.sink_mask(layer) for layer in layers}
    for layer, got in sinks.items():
        x = out.hidden_states[layer].double()
        phi = _phi64(x, cfg.sink_dims)
        assert torch.equal(got, phi >= cfg.tau), layer
        assert got.any()  # the test is only meaningful when sinks exist


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_var_decode_sink_bits_are_phi_of_each_generated_token(monkeypatch, backend):
    """The SINK bits VAR's attention uses in a cached generate, prompt and generated tokens alike, equal phi >= tau.

    A one-token decode step leaves its token's test to the kernel (``SinkBits.hidden``), which writes the bit into
    the layer's buffer; so the classes checked are the ones each call passes plus the buffer after the generate."""
    t = BUILDERS["llava"]()
    inputs = t.inputs(((3, 4), (1, 2)))
    cfg = vlmfix.VAR(sink_dims=(0, 1, 2), tau=1.5, rho=0.2, min_visual_mass=0.05)
    key_class, kernel_tested = {}, {}
    with vlmfix.patched(t.model, cfg, backend=backend):
        runtime = _runtime(t.model, "VarRuntime")
        contribute = runtime.contribute

        def recording(call):
            contribute(call)
            key_class[call.layer] = call.params.key_class.clone()  # the last step's covers every position
            sb = call.params.sink_bits
            if sb.hidden is not None:
                kernel_tested[call.layer] = kernel_tested.get(call.layer, 0) + 1

        monkeypatch.setattr(runtime, "contribute", recording)
        with torch.no_grad():
            out = t.model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=0,
                                   output_hidden_states=True, return_dict_in_generate=True)
        sinks = {layer: runtime.sink_mask(layer) for layer in key_class}
    prompt = inputs["input_ids"].shape[1]
    layers = cfg.resolve_layers(len(t.model.get_decoder().layers))
    assert set(key_class) == set(layers)
    for layer in layers:
        assert kernel_tested[layer] == 7, layer  # every decode step after the prefill
        # the state entering ``layer`` at the prefill and at each decode step, in fp64, RMS with eps as in the code
        x = torch.cat([step[layer] for step in out.hidden_states], dim=1).double()
        phi = _phi64(x, cfg.sink_dims)
        classes = key_class[layer] | sinks[layer].to(torch.int32) * SINK
        assert classes.shape == phi.shape, layer
        assert torch.equal(classes & SINK != 0, phi >= cfg.tau), layer
        assert torch.equal(classes & VISUAL != 0, out.sequences[:, :-1] == t.image_token_id), layer
        assert not (key_class[layer] & SINK).any()  # the bits travel beside the shared classes
        generated = phi[:, prompt:] >= cfg.tau
        assert generated.any() and not generated.all(), layer  # meaningful only with both kinds of decode tokens


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_var_sink_bits_of_multi_token_and_single_token_cached_steps(backend):
    """A cached forward of several new tokens tests them on the host (``SinkBitWriter``), a one-token step leaves it
    to the kernel; both record phi >= tau of the state entering each layer."""
    t = BUILDERS["llava"]()
    inputs = t.inputs(((3, 4), (1, 2)))
    cfg = vlmfix.VAR(sink_dims=(0, 1, 2), tau=1.5, rho=0.2, min_visual_mass=0.05)
    g = torch.Generator().manual_seed(3)
    states = []
    # the cache argument was renamed in newer transformers
    cache_kw = "cache" if "cache" in inspect.signature(type(t.model).forward).parameters else "past_key_values"
    with vlmfix.patched(t.model, cfg, backend=backend), torch.no_grad():
        runtime = _runtime(t.model, "VarRuntime")
        out = t.model(**inputs, use_cache=True, output_hidden_states=True)
        states.append(out.hidden_states)
        ids, att = inputs["input_ids"], inputs["attention_mask"]
        for n_new in (3, 1, 2, 1):
            new = torch.randint(3, 200, (ids.shape[0], n_new), generator=g)
            att = torch.cat([att, torch.ones_like(new)], 1)
            out = t.model(input_ids=new, attention_mask=att, use_cache=True, output_hidden_states=True,
                          **{cache_kw: out.past_key_values})
            states.append(out.hidden_states)
            ids = torch.cat([ids, new], 1)
        layers = cfg.resolve_layers(len(t.model.get_decoder().layers))
        sinks = {layer: runtime.sink_mask(layer) for layer in layers}
    for layer in layers:
        x = torch.cat([step[layer] for step in states], dim=1).double()
        phi = _phi64(x, cfg.sink_dims)
        assert torch.equal(sinks[layer], phi >= cfg.tau), layer
        late = phi[:, inputs["input_ids"].shape[1]:] >= cfg.tau
        assert late.any() and not late.all(), layer


def _twin_batch(t, rows, seed):
    with_image = t.inputs(rows, seed=seed)
    without = t.inputs(rows, seed=seed, with_image=False)
    width = with_image["input_ids"].shape[1]
    b = len(rows)
    ids = torch.zeros(2 * b, width, dtype=torch.long)
    att = torch.zeros(2 * b, width, dtype=torch.long)
    ids[:b], att[:b] = with_image["input_ids"], with_image["attention_mask"]
    w2 = without["input_ids"].shape[1]
    ids[b:, width - w2:], att[b:, width - w2:] = without["input_ids"], without["attention_mask"]
    twin = {"input_ids": ids, "attention_mask": att}
    for k, v in with_image.items():
        if k not in twin:
            twin[k] = v
    if "mm_token_type_ids" in with_image:
        twin["mm_token_type_ids"] = (ids == t.image_token_id).long()
    return with_image, twin


def _manual_vhr(model, twin, layers, alpha, b):
    """Alg. 1 with o_proj pre-hooks on the unpatched model: measure, zero outliers, keep > median, scale, go on."""
    cfg = model.config.get_text_config()
    n_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    chosen, handles = {}, []
    decoder = model.get_decoder().layers
    for layer in layers:
        def hook(module, args, layer=layer):
            x = args[0]
            xs = x.view(*x.shape[:2], n_heads, head_dim)
            img, txt = xs[:b, -1].double(), xs[b:, -1].double()
            vhd = (img - txt).norm(dim=-1)
            ta = txt.pow(2).sum(-1)

            def high(v):
                return v > v.mean(-1, keepdim=True) + v.std(-1, keepdim=True)

            v = torch.where(high(vhd) & high(ta), torch.zeros_like(vhd), vhd)
            heads = v > v.median(-1, keepdim=True).values
            chosen[layer] = heads
            scale = (1 + (alpha - 1) * heads.double()).repeat(2, 1)
            return ((xs.double() * scale[:, None, :, None]).to(x.dtype).view_as(x),)

        handles.append(decoder[layer].self_attn.o_proj.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(**twin)
    finally:
        for h in handles:
            h.remove()
    return chosen


def test_vhr_exact_heads_equal_layer_by_layer_reference():
    for family in ("llava", "qwen2_vl"):
        t = BUILDERS[family]()
        rows = ((3, 4), (1, 2))
        inputs, twin = _twin_batch(t, rows, seed=7)
        cfg = vlmfix.VHR(alpha=2.0, mode="exact", layers=(1, 3, 4))
        expected = _manual_vhr(t.model, twin, cfg.layers, cfg.alpha, len(rows))
        with vlmfix.patched(t.model, cfg):
            with torch.no_grad():
                t.model(**inputs)
            got = _runtime(t.model, "VhrRuntime").heads
        assert set(got) == set(expected)
        for layer in expected:
            assert torch.equal(got[layer].cpu(), expected[layer]), (family, layer)
            assert expected[layer].any()


def test_vhr_scale_applies_to_chosen_heads_only():
    t = BUILDERS["llava"]()
    inputs = t.inputs(((3, 4),), seed=2)
    cfg = vlmfix.VHR(alpha=2.0, mode="fused", layers=(2,))
    captured = {}
    o_proj = t.model.get_decoder().layers[2].self_attn.o_proj
    handle = o_proj.register_forward_pre_hook(lambda m, a: captured.setdefault("x", []).append(a[0].clone()))
    try:
        with torch.no_grad():
            t.model(**inputs)
            with vlmfix.patched(t.model, cfg):
                t.model(**inputs)
                heads = _runtime(t.model, "VhrRuntime").heads[2][0]
    finally:
        handle.remove()
    plain, scaled = (x.view(*x.shape[:2], 4, -1) for x in captured["x"])
    factor = (scaled / plain).mean(dim=(0, 1, 3))
    torch.testing.assert_close(factor, 1 + heads.float(), atol=1e-4, rtol=1e-4)


def test_dual_stream_tokens_equal_cls_attention_rule():
    t = BUILDERS["llava"]()
    # a bigger tower grid so that top-25% and Tukey outliers are non-trivial: 6x6 patches
    import transformers as tf

    cfg = t.model.config
    cfg.vision_config.image_size = 84
    model = tf.LlavaForConditionalGeneration(cfg).eval()
    n_img = 36
    ids = torch.cat([torch.tensor([[1, 5, 6]]), torch.full((1, n_img), t.image_token_id),
                     torch.tensor([[7, 8, 9]])], dim=1)
    pixel = torch.randn(1, 3, 84, 84)
    ds = vlmfix.DualStream(alpha=0.7, beta=0.4, local_ratio=0.25)
    with vlmfix.patched(model, ds):
        with torch.no_grad():
            model(input_ids=ids, pixel_values=pixel)
        bits = _runtime(model, "DualStreamRuntime").bits[0]
    # reference: eager tower attention maps, CLS row summed over heads (layer 0 and the feature layer -2 => index 1)
    model.set_attn_implementation({"vision_config": "eager"})
    with torch.no_grad():
        att = model.model.vision_tower(pixel, output_attentions=True).attentions
    local_scores = att[0][0, :, 0, 1:].sum(0).double()
    summary_scores = att[1][0, :, 0, 1:].sum(0).double()
    q1, q3 = torch.quantile(summary_scores, torch.tensor([0.25, 0.75], dtype=torch.float64))
    summary = summary_scores > q3 + 1.5 * (q3 - q1)
    local = torch.zeros(n_img, dtype=torch.bool)
    local[local_scores.argsort(descending=True)[: int(n_img * 0.25)]] = True
    local &= ~summary
    visual_bits = bits[3:3 + n_img]
    assert torch.equal((visual_bits & LOCAL) != 0, local)
    assert torch.equal((visual_bits & SUMMARY) != 0, summary)
    assert local.sum() > 0
    assert (bits[:3] == 0).all() and (bits[3 + n_img:] == 0).all()
