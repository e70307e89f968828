"""CARVE pure steps: contrast, step fusion, threshold, regions and refinement, against numpy re-implementations."""

import numpy as np
import pytest
import torch
from PIL import Image

from vlmfix.heads import (attention_entropy, contrast, fuse_maps, refine_image, select_regions, step_weights,
                          top_p_mask)
from vlmfix.heads._label import label_components


def bilinear_reference(grid, out_h, out_w):
    """Half-pixel-centre bilinear resize (align_corners=False, edge-clamped), written out per output pixel."""
    in_h, in_w = grid.shape
    out = np.zeros((out_h, out_w))
    for y in range(out_h):
        sy = max((y + 0.5) * in_h / out_h - 0.5, 0.0)
        y0 = min(int(np.floor(sy)), in_h - 1)
        y1, fy = min(y0 + 1, in_h - 1), sy - y0
        for x in range(out_w):
            sx = max((x + 0.5) * in_w / out_w - 0.5, 0.0)
            x0 = min(int(np.floor(sx)), in_w - 1)
            x1, fx = min(x0 + 1, in_w - 1), sx - x0
            top = grid[y0, x0] * (1 - fx) + grid[y0, x1] * fx
            bottom = grid[y1, x0] * (1 - fx) + grid[y1, x1] * fx
            out[y, x] = top * (1 - fy) + bottom * fy
    return out


def fuse_reference(q_maps, g_maps, grid_hw, image_hw, mode, lam):
    """Paper Alg. 1 line 4, literally: upsample every layer's contrast map, then weight by step and sum."""
    if mode == "last_token":
        pairs, weights = [(q_maps[-1], g_maps[-1])], [1.0]
    else:
        n = min(len(q_maps), len(g_maps))
        pairs = list(zip(q_maps[:n], g_maps[:n]))
        weights = [t + 1.0 for t in range(n)] if mode == "all_steps" else [1.0] + [0.0] * (n - 1)
    total = np.zeros(image_hw)
    for w, (q, g) in zip(weights, pairs):
        q, g = q.double().numpy(), g.double().numpy()
        for layer in range(q.shape[0]):
            ratio = (q[layer] / (g[layer] + lam)).reshape(grid_hw)
            total += w * bilinear_reference(ratio, *image_hw)
    return total


def maps(steps, layers=3, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(layers, n, generator=g) * 0.01 + 1e-4 for _ in range(steps)]


def test_contrast_elementwise():
    a_q, a_g = torch.tensor([0.2, 0.0, 0.3]), torch.tensor([0.1, 0.0, 0.6])
    torch.testing.assert_close(contrast(a_q, a_g, lam=0.0 + 1e-8), torch.tensor([2.0, 0.0, 0.5]))
    assert contrast(a_q.half(), a_g.half()).dtype == torch.float32
    assert contrast(a_q.double(), a_g.double()).dtype == torch.float64
    with pytest.raises(ValueError, match="same shape"):
        contrast(a_q, a_g[:2])


def test_step_weights():
    assert step_weights(4, "last_token").tolist() == [0, 0, 0, 1]
    assert step_weights(4, "all_steps").tolist() == [1, 2, 3, 4]
    assert step_weights(4, "first_token").tolist() == [1, 0, 0, 0]
    assert step_weights(1, "last_token").tolist() == [1]
    with pytest.raises(ValueError, match="step mode"):
        step_weights(3, "t_end")
    with pytest.raises(ValueError, match=">= 1"):
        step_weights(0, "all_steps")


@pytest.mark.parametrize("mode", ["last_token", "all_steps", "first_token"])
def test_fuse_maps_matches_per_map_upsampling(mode):
    q_maps, g_maps = maps(5, seed=1), maps(3, seed=2)  # passes of different lengths
    got = fuse_maps(q_maps, g_maps, (3, 4), (9, 10), mode, lam=1e-8)
    assert got.shape == (9, 10) and got.dtype == torch.float32
    ref = fuse_reference(q_maps, g_maps, (3, 4), (9, 10), mode, 1e-8)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4)


def test_fuse_maps_last_token_pairs_last_steps():
    q_maps, g_maps = maps(4, seed=3), maps(2, seed=4)
    alone = fuse_maps(q_maps[-1:], g_maps[-1:], (3, 4), (6, 8), "last_token")
    torch.testing.assert_close(fuse_maps(q_maps, g_maps, (3, 4), (6, 8), "last_token"), alone)


def test_fuse_maps_shape_errors():
    with pytest.raises(ValueError, match=r"\(L, 12\)"):
        fuse_maps(maps(2, n=10), maps(2, n=10), (3, 4), (6, 8))
    with pytest.raises(ValueError, match="layers"):
        fuse_maps(maps(2, layers=3), maps(2, layers=2), (3, 4), (6, 8))
    with pytest.raises(ValueError, match="at least one"):
        fuse_maps([], maps(1), (3, 4), (6, 8))


def test_top_p_mask_matches_percentile():
    s = torch.rand(37, 41, generator=torch.Generator().manual_seed(5))
    for p in (0.2, 0.4, 0.75):
        threshold = np.percentile(s.double().numpy(), (1 - p) * 100)
        np.testing.assert_array_equal(top_p_mask(s, p).numpy(), s.double().numpy() >= threshold)
        assert abs(top_p_mask(s, p).float().mean().item() - p) < 0.01
    assert top_p_mask(s, 1.0).all()
    assert top_p_mask(s, 0.0).sum() == 1
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        top_p_mask(s.flatten(), 0.2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        top_p_mask(s, 1.5)


def test_select_regions_two_blobs_by_attention_sum():
    # blob A: 2 pixels worth 10 in total; blob B: 4 pixels worth 4 (bigger but weaker); C: one pixel diagonal to A
    mask = torch.tensor([[1, 1, 0, 0, 0],
                         [0, 0, 1, 0, 0],
                         [0, 0, 0, 0, 0],
                         [0, 0, 0, 1, 1],
                         [0, 0, 0, 1, 1]], dtype=torch.bool)
    sal = torch.tensor([[5., 5, 0, 0, 0],
                        [0, 0, 3, 0, 0],
                        [0, 0, 0, 0, 0],
                        [0, 0, 0, 1, 1],
                        [0, 0, 0, 1, 1]])
    assert select_regions(mask, sal, 1).nonzero().tolist() == [[0, 0], [0, 1]]  # A alone: 4-connectivity
    kept = select_regions(mask, sal, 2)
    assert kept.sum() == 6 and not kept[1, 2]  # A and B; C (3) < B (4)
    assert torch.equal(select_regions(mask, sal, 5), mask)
    assert not select_regions(torch.zeros(3, 3, dtype=torch.bool), torch.ones(3, 3)).any()
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        select_regions(mask, sal[:4])


def test_select_regions_k_is_a_maximum():
    mask = torch.zeros(9, 9, dtype=torch.bool)
    mask[::2, ::2] = True  # 25 isolated pixels
    sal = torch.arange(81, dtype=torch.float32).reshape(9, 9)
    kept = select_regions(mask, sal, 2)
    assert kept.nonzero().tolist() == [[8, 6], [8, 8]]


def test_label_components_match_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    g = np.random.default_rng(6)
    for density in (0.3, 0.5, 0.6):
        m = g.random((40, 33)) < density
        ours, n = label_components(m)
        ref, n_ref = ndimage.label(m)
        assert n == n_ref
        np.testing.assert_array_equal(ours, ref)
    spiral = np.zeros((7, 7), dtype=bool)  # one component that needs merges across rows
    spiral[0, :] = spiral[:, 6] = spiral[6, :] = spiral[2:, 0] = spiral[2, :5] = spiral[2:5, 4] = True
    np.testing.assert_array_equal(label_components(spiral)[0], ndimage.label(spiral)[0])


def test_refine_image_masks_crops_and_magnifies():
    pixels = np.full((20, 40, 3), 200, dtype=np.uint8)  # H=20, W=40
    image = Image.fromarray(pixels)
    keep = np.zeros((20, 40), dtype=bool)
    keep[5:10, 10:20] = True
    keep[5, 10] = False  # a hole inside the bbox must come out black
    out = refine_image(image, torch.from_numpy(keep))
    assert out.size == (40, 20)  # crop 10x5, scale max(40/10, 20/5) = 4
    small = refine_image(image, keep, max_side_factor=1e9).resize((10, 5), Image.NEAREST)
    arr = np.asarray(small)
    assert arr[0, 0].max() < 100 and arr[2, 5].min() > 150
    assert refine_image(image, np.zeros((20, 40), dtype=bool)) is image
    with pytest.raises(ValueError, match=r"\(H, W\) = \(20, 40\)"):
        refine_image(image, np.ones((40, 20), dtype=bool))


def test_refine_image_caps_thin_crops():
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    keep = np.zeros((20, 40), dtype=bool)
    keep[:, 7] = True  # 1 px wide, full height: uncapped scale would be 40 -> 40 x 800
    assert refine_image(image, keep).size == (4, 80)  # each side at most 4x the original side
    assert refine_image(image, keep, max_side_factor=1e9).size == (40, 800)
    palette = image.convert("P")
    assert refine_image(palette, keep).mode == "RGB"


def test_attention_entropy():
    uniform = torch.full((2, 3, 16), 0.01)
    torch.testing.assert_close(attention_entropy(uniform), torch.full((2, 3), float(np.log(16))))
    one_hot = torch.zeros(4, 8)
    one_hot[:, 2] = 0.3
    assert torch.equal(attention_entropy(one_hot), torch.zeros(4))
    p = torch.tensor([0.5, 0.25, 0.25])
    assert attention_entropy(p, normalize=False).item() == pytest.approx(1.5 * np.log(2))
