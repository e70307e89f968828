"""PAINT token selection and score pooling against numpy, explicit attention maps, and transformers' own modules."""

import numpy as np
import pytest
import torch

from vlmfix.heads import (avg_pool_scores, cls_attention, local_tokens, pixel_shuffle_scores, pool_scores,
                          received_attention, select_streams, summary_tokens)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def attention_reference(q, k, scale):
    """Full softmax attention map in fp64 numpy, (B, H, T, T)."""
    s = np.einsum("bhqd,bhkd->bhqk", q.double().numpy(), k.double().numpy()) * scale
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    return s / s.sum(axis=-1, keepdims=True)


def test_local_tokens_top_k():
    scores = rand(3, 50)
    got = local_tokens(scores, 0.25)
    assert got.dtype == torch.bool and (got.sum(1) == 12).all()  # int(50 * 0.25)
    for b in range(3):
        assert set(np.flatnonzero(got[b].numpy())) == set(np.argsort(-scores[b].numpy())[:12])
    assert local_tokens(torch.ones(1, 8), 0.5).tolist() == [[True] * 4 + [False] * 4]  # ties: lower index first
    assert not local_tokens(scores, 0.0).any() and local_tokens(scores, 1.0).all()


def test_summary_tokens_known_iqr():
    # n=9: Q1 at position 2 -> 3, Q3 at position 6 -> 7, fence 7 + 1.5 * 4 = 13
    assert summary_tokens(torch.tensor([[1., 2, 3, 4, 5, 6, 7, 8, 100]])).nonzero()[:, 1].tolist() == [8]
    # n=6: Q1 = 2.25, Q3 = 4.75 (interpolated), fence 8.5; 8.5 itself is not an outlier (strict >)
    x = torch.tensor([[1., 2, 3, 4, 5, 30], [1., 2, 3, 4, 5, 8.5]])
    assert summary_tokens(x).tolist() == [[False] * 5 + [True], [False] * 6]


def test_summary_tokens_match_numpy_percentile():
    scores = rand(8, 577).exp() ** 2  # heavy right tail, as CLS attention has
    got = summary_tokens(scores)
    for b in range(8):
        row = scores[b].double().numpy()
        q1, q3 = np.percentile(row, [25, 75])
        np.testing.assert_array_equal(got[b].numpy(), row > q3 + 1.5 * (q3 - q1))
    assert got.any()


def test_select_streams_disjoint():
    local_scores, summary_scores = rand(4, 100, seed=1), rand(4, 100, seed=2).exp()
    summary_scores[:, :10] += 1000.0  # make the summary set overlap the local top tokens
    local_scores[:, :10] += 50.0
    local, summary = select_streams(local_scores, summary_scores, 0.25)
    assert not (local & summary).any()
    assert torch.equal(summary, summary_tokens(summary_scores))
    assert torch.equal(local, local_tokens(local_scores, 0.25) & ~summary)
    assert (local.sum(1) <= 25).all() and summary[:, :10].all()
    with pytest.raises(ValueError, match=r"\(B, P\)"):
        select_streams(local_scores, summary_scores[:, :50])


def test_cls_and_received_attention_match_explicit_map():
    q, k = rand(2, 3, 9, 8, seed=3), rand(2, 3, 9, 8, seed=4)
    attn = attention_reference(q, k, 0.5)
    np.testing.assert_allclose(cls_attention(q, k, 0.5).numpy(), attn[:, :, 0, 1:].sum(1), rtol=1e-5)
    received = attn.sum(axis=1).mean(axis=1)
    np.testing.assert_allclose(received_attention(q, k, 0.5, chunk=4).numpy(), received, rtol=1e-5)
    np.testing.assert_allclose(received_attention(q, k, 0.5).numpy(), received, rtol=1e-5)
    np.testing.assert_allclose(cls_attention(q, k).numpy(),  # default scale D**-0.5
                               attention_reference(q, k, 8 ** -0.5)[:, :, 0, 1:].sum(1), rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, H, T, D\)"):
        cls_attention(q[0], k[0])


def test_cls_attention_matches_clip_attention_map():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=28, patch_size=7, attn_implementation="eager")
    model = CLIPVisionModel(cfg).eval()
    attn_mod = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn"))
    captured = {}
    for name in ("q_proj", "k_proj"):
        getattr(attn_mod, name).register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
    with torch.no_grad():
        out = model(pixel_values=rand(2, 3, 28, 28, seed=5), output_attentions=True)

    def heads(x):
        return x.reshape(x.shape[0], x.shape[1], 4, 8).transpose(1, 2)

    got = cls_attention(heads(captured["q_proj"]), heads(captured["k_proj"]), attn_mod.scale)
    want = out.attentions[0][:, :, 0, 1:].sum(1)
    assert got.shape == (2, 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_pool_scores_groups():
    s = rand(2, 12)
    np.testing.assert_allclose(pool_scores(s, 4).numpy(),
                               [[s[b, 4 * i:4 * i + 4].sum().item() for i in range(3)] for b in range(2)], rtol=1e-6)
    with pytest.raises(ValueError, match="multiple"):
        pool_scores(s, 5)


def test_avg_pool_scores_loop():
    h, w, k = 8, 12, 4
    s = rand(2, h * w)
    grid = s.numpy().reshape(2, h, w)
    ref = [[grid[b, i * k:(i + 1) * k, j * k:(j + 1) * k].mean() for i in range(h // k) for j in range(w // k)]
           for b in range(2)]
    np.testing.assert_allclose(avg_pool_scores(s, (h, w), k).numpy(), ref, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 8\*12\)"):
        avg_pool_scores(s[:, :-1], (h, w), k)
    with pytest.raises(ValueError, match="divisible"):
        avg_pool_scores(s, (h, w), 5)


@pytest.mark.parametrize("side,factor", [(8, 2), (12, 3), (12, 4)])
def test_pixel_shuffle_scores_match_idefics3(side, factor):
    from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector

    s = rand(2, side * side, seed=side + factor)
    shuffled = Idefics3Connector.pixel_shuffle(None, s.unsqueeze(-1), factor)  # (B, seq/f^2, f^2): one channel
    torch.testing.assert_close(pixel_shuffle_scores(s, (side, side), factor), shuffled.sum(-1), rtol=1e-5,
                               atol=1e-5)
