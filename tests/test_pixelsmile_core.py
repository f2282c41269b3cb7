"""Conditioning and losses of PixelSmile, on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from pixelsmile.conditioning import Embedding, blend, interpolate, parse_blend, prompt
from pixelsmile.losses import (
    LossWeights,
    flow_matching,
    identity,
    info_nce_pair,
    noisy,
    predicted_x0,
    symmetric_loss,
)


def emb(length: int, valid: int, seed: int, batch: int = 2, dim: int = 4) -> Embedding:
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(batch, length, dim, generator=g)
    mask = torch.zeros(batch, length, dtype=torch.long)
    mask[:, :valid] = 1
    return Embedding(e * mask.unsqueeze(-1), mask)


def test_interpolation_hits_both_ends_and_is_linear_in_alpha():
    neu, cat = emb(5, 5, 0), emb(7, 6, 1)
    assert torch.equal(interpolate(neu, cat, 0.0).embeds, neu.padded(7).embeds)
    assert torch.allclose(interpolate(neu, cat, 1.0).embeds, cat.embeds)
    e = {a: interpolate(neu, cat, a).embeds for a in (0.1, 0.2, 0.3, 1.5)}
    assert torch.allclose(e[0.3] - e[0.1], 2 * (e[0.2] - e[0.1]), atol=1e-6)
    assert torch.allclose(e[1.5], neu.padded(7).embeds + 1.5 * (cat.embeds - neu.padded(7).embeds))  # extrapolates
    out = interpolate(neu, cat, 0.4)
    assert out.embeds.shape == (2, 7, 4) and out.mask.tolist() == [[1] * 6 + [0]] * 2  # the union of the masks


def test_interpolation_takes_one_alpha_per_sample():
    neu, cat = emb(4, 4, 0), emb(4, 4, 1)
    out = interpolate(neu, cat, torch.tensor([0.0, 1.0]))
    assert torch.allclose(out.embeds[0], neu.embeds[0]) and torch.allclose(out.embeds[1], cat.embeds[1])
    with pytest.raises(ValueError, match="one per sample"):
        interpolate(neu, cat, torch.tensor([0.1, 0.2, 0.3]))


def test_blending_sums_the_weighted_differences():
    neu, happy, surprised = emb(5, 5, 0), emb(6, 6, 1), emb(5, 4, 2)
    out = blend(neu, [happy, surprised], [0.6, 0.4])
    n, h, s = neu.padded(6).embeds, happy.embeds, surprised.padded(6).embeds
    assert torch.allclose(out.embeds, n + 0.6 * (h - n) + 0.4 * (s - n), atol=1e-6)
    assert torch.allclose(blend(neu, [happy], [0.3]).embeds, interpolate(neu, happy, 0.3).embeds)
    assert torch.equal(blend(neu, [], []).embeds, neu.embeds)


def test_prompts_and_blend_specs_are_checked():
    assert prompt("surprised") == "Edit the person to show a surprised expression"
    assert prompt("neutral", "anime") == "Edit the character to show a neutral expression"
    assert parse_blend("happy=0.6, surprised=0.4") == {"happy": 0.6, "surprised": 0.4}
    for bad, msg in [("joy=1", "unknown expression 'joy'"), ("happy", "CATEGORY=INTENSITY"), ("happy=x", "number")]:
        with pytest.raises(ValueError, match=msg):
            parse_blend(bad)
    with pytest.raises(ValueError, match="unknown expression 'joy'"):
        prompt("joy")


def test_info_nce_matches_a_hand_computed_value():
    # Output a at 60 degrees from target a and 90 from target b; output b on target b, 120 from a.
    def unit(deg: float) -> list[float]:
        return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]

    ta, tb = torch.tensor([unit(0)]), torch.tensor([unit(90)])
    pa, pb = torch.tensor([unit(-60)]), torch.tensor([unit(90)])
    tau = 0.5
    ce_a = -math.log(math.exp(0.5 / tau) / (math.exp(0.5 / tau) + math.exp(math.cos(math.radians(150)) / tau)))
    ce_b = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0 / tau)))
    assert float(info_nce_pair(pa, pb, ta, tb, tau=tau)) == pytest.approx((ce_a + ce_b) / 2, rel=1e-6)
    # Scale does not matter (cosine), and a perfect separation costs almost nothing at tau 0.07.
    assert float(info_nce_pair(3 * pa, pb, ta, 2 * tb, tau=tau)) == pytest.approx((ce_a + ce_b) / 2, rel=1e-6)
    assert float(info_nce_pair(ta, tb, ta, tb)) < 1e-5


def test_the_symmetric_loss_does_not_change_when_the_targets_swap():
    g = torch.Generator().manual_seed(0)
    x0_a, x0_b, noise_a, noise_b = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(4))
    sigma = torch.tensor([0.2, 0.5, 0.9])
    feats = {k: torch.randn(3, 16, generator=g) for k in ("pa", "pb", "ta", "tb", "ida", "idb", "src")}

    def loss(first, second):
        (x_a, n_a, fa, ta, ia), (x_b, n_b, fb, tb, ib) = first, second
        xt_a, v_a = noisy(x_a, n_a, sigma)
        xt_b, v_b = noisy(x_b, n_b, sigma)
        pred_a, pred_b = v_a + 0.1, v_b - 0.2  # a model's guess
        ident = 0.5 * (identity(ia, feats["src"]) + identity(ib, feats["src"]))
        terms = symmetric_loss(flow_matching(pred_a, v_a), flow_matching(pred_b, v_b),
                               info_nce_pair(fa, fb, ta, tb), ident, LossWeights())  # fmt: skip
        return terms.total

    a = (x0_a, noise_a, feats["pa"], feats["ta"], feats["ida"])
    b = (x0_b, noise_b, feats["pb"], feats["tb"], feats["idb"])
    assert float(loss(a, b)) == pytest.approx(float(loss(b, a)), rel=1e-6)


def test_flow_matching_pieces_invert_each_other():
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    sigma = torch.tensor([0.3, 0.8])
    x_t, v = noisy(x0, noise, sigma)
    assert torch.allclose(predicted_x0(x_t, v, sigma), x0, atol=1e-6)  # the true velocity recovers x0
    assert float(flow_matching(v, v)) == 0.0
    assert float(identity(x0.flatten(1), x0.flatten(1))) == pytest.approx(0.0, abs=1e-6)
