"""VHR head selection (Eqs. 4-7) against a per-row numpy loop and hand-worked cases."""

import numpy as np
import pytest
import torch

from vlmfix.heads import head_divergence, select_heads, suppress_outliers, text_norm_sq


def select_reference(vhd, ta, outlier_rule=True, ddof=1):
    vhd, ta = np.asarray(vhd, dtype=np.float64), np.asarray(ta, dtype=np.float64)
    out = np.zeros(vhd.shape, dtype=bool)
    for b in range(vhd.shape[0]):
        v = vhd[b].copy()
        if outlier_rule:
            v_hi = v > v.mean() + v.std(ddof=ddof)
            t_hi = ta[b] > ta[b].mean() + ta[b].std(ddof=ddof)
            v[v_hi & t_hi] = 0.0
        lower_median = np.sort(v)[(len(v) - 1) // 2]
        out[b] = v > lower_median
    return out


def test_divergence_and_text_norm_match_loops():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 8, 16, generator=g), torch.randn(3, 8, 16, generator=g)
    an, bn = a.double().numpy(), b.double().numpy()
    vhd = np.array([[np.sqrt(sum((an[i, h, d] - bn[i, h, d]) ** 2 for d in range(16))) for h in range(8)]
                    for i in range(3)])
    ta = np.array([[sum(bn[i, h, d] ** 2 for d in range(16)) for h in range(8)] for i in range(3)])
    got = head_divergence(a, b)
    assert got.shape == (3, 8) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), vhd, rtol=1e-5)
    np.testing.assert_allclose(text_norm_sq(b).numpy(), ta, rtol=1e-5)
    assert head_divergence(a.half(), b.half()).dtype == torch.float32


@pytest.mark.parametrize("outlier_rule", [True, False])
@pytest.mark.parametrize("correction", [0, 1])
def test_select_heads_matches_reference(outlier_rule, correction):
    g = torch.Generator().manual_seed(1)
    vhd = torch.rand(16, 32, generator=g)
    ta = torch.rand(16, 32, generator=g)
    vhd[:, :3] += 2.0  # outliers in VHD ...
    ta[:, 1:4] += 2.0  # ... and in TA; heads 1-2 are both
    got = select_heads(vhd, ta, outlier_rule, correction=correction)
    ref = select_reference(vhd.numpy(), ta.numpy(), outlier_rule, ddof=correction)
    np.testing.assert_array_equal(got.numpy(), ref)
    assert (got.sum(dim=1) == 16).all()  # distinct VHDs: exactly the first half
    assert not got[:, 1:3].any() if outlier_rule else got[:, :3].all()


def test_hand_worked_outlier_case():
    vhd = torch.tensor([[1.0, 2.0, 3.0, 10.0]])
    ta = torch.tensor([[1.0, 1.0, 1.0, 10.0]])
    # VHD: mean 4, sample std sqrt(50/3) = 4.08 -> head 3 is high; TA: mean 3.25, std 4.5 -> head 3 is high.
    assert suppress_outliers(vhd, ta).tolist() == [[1.0, 2.0, 3.0, 0.0]]
    # zeroed row [1, 2, 3, 0]: lower median 1 -> heads 1, 2
    assert select_heads(vhd, ta).tolist() == [[False, True, True, False]]
    assert select_heads(vhd, ta, outlier_rule=False).tolist() == [[False, False, True, True]]
    # a VHD outlier whose text-only output is ordinary is kept: it really uses the image
    assert select_heads(vhd, torch.tensor([[10.0, 1.0, 1.0, 1.0]])).tolist() == [[False, False, True, True]]


def test_odd_count_and_ties():
    assert select_heads(torch.tensor([[5.0, 1.0, 3.0]]), torch.zeros(1, 3), False).tolist() == [[True, False, False]]
    assert not select_heads(torch.ones(2, 8), torch.ones(2, 8)).any()  # all tied: nothing above the median
    tied = torch.tensor([[1.0, 2.0, 2.0, 2.0, 3.0, 4.0]])
    assert select_heads(tied, torch.zeros(1, 6), False).tolist() == [[False, False, False, False, True, True]]


def test_rows_are_independent():
    g = torch.Generator().manual_seed(2)
    vhd, ta = torch.rand(4, 12, generator=g), torch.rand(4, 12, generator=g)
    full = select_heads(vhd, ta)
    for b in range(4):
        assert torch.equal(full[b:b + 1], select_heads(vhd[b:b + 1], ta[b:b + 1]))


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(B, H, D\)"):
        head_divergence(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="same"):
        head_divergence(torch.zeros(1, 4, 8), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, H\)"):
        select_heads(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"\(B, H\)"):
        select_heads(torch.zeros(1, 4), torch.zeros(1, 5))
