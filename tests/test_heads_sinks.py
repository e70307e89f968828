"""VAR sink detection: phi against an fp64 loop, the known-dims table, and discovery on planted massive activations."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vlmfix.heads import (KNOWN_SINK_DIMS, SinkBitWriter, detect_sinks, find_sink_dims, known_sink_dims, sink_scores,
                          sink_dims_from_hidden_states)


def phi_reference(hidden, dims):
    h = hidden.double().numpy()
    out = np.zeros(h.shape[:2])
    for b in range(h.shape[0]):
        for t in range(h.shape[1]):
            x = h[b, t]
            rms = np.sqrt(np.mean(x * x) + 1e-6)
            out[b, t] = max(abs(x[d]) / rms for d in dims)
    return out


def planted(b=2, t=6, d=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, t, d, generator=g)
    h[0, 0, 7] = 60.0
    h[1, 3, 100] = -45.0
    return h


def test_sink_scores_match_reference():
    h = planted()
    got = sink_scores(h, (7, 100))
    assert got.dtype == torch.float32 and got.shape == (2, 6)
    np.testing.assert_allclose(got.numpy(), phi_reference(h, (7, 100)), rtol=1e-5)
    assert got[0, 0] > 14 and got[1, 3] > 14 and got[0, 1] < 5


def test_sink_scores_bf16_computed_in_fp32():
    h = planted().to(torch.bfloat16)
    np.testing.assert_allclose(sink_scores(h, (7,)).numpy(), phi_reference(h.float(), (7,)), rtol=1e-5)


def test_detect_sinks_threshold_semantics():
    h = planted()
    phi = sink_scores(h, (7, 100))
    tau = float(phi[0, 0])
    assert detect_sinks(h, (7, 100), tau)[0, 0]
    assert not detect_sinks(h, (7, 100), tau, strict=True)[0, 0]
    mask = detect_sinks(h, (7, 100), 8.0)
    assert mask.dtype == torch.bool
    assert mask.nonzero().tolist() == [[0, 0], [1, 3]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sink_bit_writer_equals_detect_sinks(dtype):
    g = torch.Generator().manual_seed(3)
    h = torch.randn(3, 40, 256, generator=g) * torch.rand(3, 40, 1, generator=g) * 4
    h[..., 7] *= torch.rand(3, 40, generator=g) * 60  # phi spread over 0..16 (sqrt(256)): sinks and non-sinks
    h[1, 5] = 0.0  # an all-zero state: never a sink
    h = h.to(dtype)
    dims = torch.tensor([7, 100])
    phi = sink_scores(h, dims)
    for tau in (3.0, 6.0, 10.0):  # phi <= sqrt(256) = 16
        for strict in (False, True):
            buf = torch.full((3, 50), -1, dtype=torch.int32)
            SinkBitWriter(dims, tau, 256, bit=2, strict=strict)(h, out=buf[:, 4:44])
            expected = detect_sinks(h, dims, tau, strict=strict)
            assert ((phi / tau - 1).abs() > 1e-5).all()  # no phi at the threshold, where fp32 rounding may differ
            assert expected.any() and not expected.all()
            assert torch.equal(buf[:, 4:44], expected.to(torch.int32) * 2)
            assert (buf[:, :4] == -1).all() and (buf[:, 44:] == -1).all()  # nothing written outside ``out``
    assert not detect_sinks(h, dims, 3.0)[1, 5]


def test_shape_and_dim_errors():
    with pytest.raises(ValueError, match=r"\(B, T, D\)"):
        sink_scores(torch.zeros(4, 8), (1,))
    with pytest.raises(ValueError, match="out of range"):
        sink_scores(torch.zeros(1, 2, 8), (8,))
    with pytest.raises(ValueError, match="at least one"):
        detect_sinks(torch.zeros(1, 2, 8), ())


def test_known_sink_dims_table():
    from transformers import LlamaConfig, LlavaConfig, Qwen2VLConfig

    def llava(hidden, layers, vocab):
        return LlavaConfig(text_config=LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, vocab_size=vocab,
                                                   intermediate_size=11008, num_attention_heads=32))

    assert known_sink_dims(llava(4096, 32, 32064)) == (1415, 2533)
    assert known_sink_dims(llava(5120, 40, 32064)) == (2100, 4743)
    assert known_sink_dims(llava(4096, 32, 128256)) is None  # LLaMA-3 backbone: same shape, other channels
    assert known_sink_dims(llava(4096, 30, 32064)) is None
    qwen = Qwen2VLConfig(text_config=dict(hidden_size=3584, num_hidden_layers=28, vocab_size=152064,
                                          num_attention_heads=28, num_key_value_heads=4))
    assert known_sink_dims(qwen) == (458, 2570)
    internvl = SimpleNamespace(llm_config=SimpleNamespace(model_type="internlm2", hidden_size=4096,
                                                          num_hidden_layers=32, vocab_size=92553))
    assert known_sink_dims(internvl) == (3584,)
    mistral = SimpleNamespace(model_type="mistral", hidden_size=4096, num_hidden_layers=32, vocab_size=32000)
    assert known_sink_dims(mistral) is None
    assert set(KNOWN_SINK_DIMS) == {"llava-1.5-7b", "llava-1.5-13b", "qwen2-vl-7b", "internvl2-8b"}


def planted_states(n_layers=7, t=10, d=256, seed=0):
    """Inputs of n_layers decoder layers plus a final normed state, with massive channels planted by layer."""
    g = torch.Generator().manual_seed(seed)
    hs = [torch.randn(1, t, d, generator=g) for _ in range(n_layers + 1)]
    for layer in range(n_layers):
        if layer >= 2:
            hs[layer][0, 0, 7] = 60.0  # primary: BOS-like token, every layer from 2 on
            hs[layer][0, 3, 100] = 40.0  # second primary
        if layer in (3, 4):
            hs[layer][0, 5, 50] = 30.0  # secondary: middle layers only
        if layer == 5:
            hs[layer][0, 6, 200] = 30.0  # one-off outlier: not "many layers"
        if layer < 2:
            hs[layer][0, 1, 9] = 80.0  # only in the skipped early layers
    hs[-1][0, 2, 11] = 80.0  # the post-norm final state is not a layer input
    return hs


def stats_reference(h, tau):
    x = h.double().numpy().reshape(-1, h.shape[-1])
    out = {}
    for row in x:
        r = np.abs(row) / np.sqrt(np.mean(row * row) + 1e-6)
        for d in np.flatnonzero(r >= tau):
            n, peak = out.get(int(d), (0, 0.0))
            out[int(d)] = (n + 1, max(peak, r[d]))
    return out


def test_sink_dims_from_hidden_states_planted():
    hs = planted_states()
    rep = sink_dims_from_hidden_states(hs, tau=8.0)
    assert rep.layers == (2, 3, 4, 5, 6)
    assert rep.dims == (7, 100, 50)
    assert rep.secondary == ()
    assert rep.layer_span[50] == (3, 4) and rep.layer_span[200] == (5,)
    assert 200 not in rep.scores and 9 not in rep.scores and 11 not in rep.scores
    for layer in rep.layers:
        ref = stats_reference(hs[layer], 8.0)
        assert set(ref) == set(rep.per_layer[layer])
        for d, (n, peak) in ref.items():
            assert rep.per_layer[layer][d][0] == n
            assert rep.per_layer[layer][d][1] == pytest.approx(peak, rel=1e-5)
    assert rep.sink_tokens[3][0].nonzero().flatten().tolist() == [0, 3, 5]
    assert rep.sink_tokens[6][0].nonzero().flatten().tolist() == [0, 3]
    assert "secondary" not in rep.summary()

    top2 = sink_dims_from_hidden_states(hs, tau=8.0, max_dims=2)
    assert top2.dims == (7, 100) and top2.secondary == (50,)
    assert sink_dims_from_hidden_states(hs, tau=8.0, min_layers=1, max_dims=8).dims == (7, 100, 50, 200)
    assert sink_dims_from_hidden_states(hs, tau=8.0, layers=[0, 1]).dims == (9,)


def test_sink_dims_ignores_padding():
    hs = planted_states()
    for h in hs[2:-1]:
        h[0, 9, 33] = 90.0
    mask = torch.ones(1, 10, dtype=torch.long)
    assert 33 in sink_dims_from_hidden_states(hs, tau=8.0, max_dims=8).dims
    mask[0, 9] = 0
    rep = sink_dims_from_hidden_states(hs, tau=8.0, max_dims=8, attention_mask=mask)
    assert 33 not in rep.dims and not rep.sink_tokens[2][0, 9]


def test_sink_dims_bad_inputs():
    with pytest.raises(ValueError, match="out of range"):
        sink_dims_from_hidden_states(planted_states(), layers=[20])
    with pytest.raises(ValueError, match=r"\(B, T, D\)"):
        sink_dims_from_hidden_states([torch.zeros(3, 4)] * 4)


def test_find_sink_dims_tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=256, num_hidden_layers=5, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=50)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight[3, 17] = 300.0  # a token with a massive channel, like LLaMA's BOS
    ids = torch.tensor([[3, 10, 11, 12, 13, 3, 14, 15], [20, 21, 22, 23, 24, 25, 26, 27]])
    rep = find_sink_dims(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, tau=8.0)
    assert rep.dims == (17,)
    assert rep.layers == (2, 3, 4)
    for layer in rep.layers:
        assert rep.sink_tokens[layer].nonzero().tolist() == [[0, 0], [0, 5]]
