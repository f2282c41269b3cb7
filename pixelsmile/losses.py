"""The training losses of PixelSmile.

Per triplet (source s, targets a and b of one confusable pair):

    L = 1/2 (FM_a + FM_b) + w_sc L_SC + w_id L_ID

- FM: rectified-flow matching as in diffusers' Qwen-Image and SD3 training: x_t = (1 - sigma) x_0 +
  sigma noise, the model predicts v = noise - x_0, loss = mean (v_pred - v)^2 (optionally weighted).
- L_SC (symmetric contrastive): InfoNCE with temperature tau over frozen image features of each
  predicted clean image x_0_hat = x_t - sigma v_pred: the output for a is pulled to target a and
  pushed from target b, and the output for b the other way round; the two terms are averaged.
- L_ID: 1 - cos between face embeddings of each prediction and of the source, averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def sample_sigmas(batch: int, generator: torch.Generator | None = None, *, logit_mean: float = 0.0,
                  logit_std: float = 1.0, device=None) -> torch.Tensor:  # fmt: skip
    """Noise levels in (0, 1): logit-normal, diffusers' default density for flow-matching training."""
    u = torch.randn(batch, generator=generator, device="cpu") * logit_std + logit_mean
    return torch.sigmoid(u).to(device)


def _expand(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigma.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def noisy(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, the velocity to predict) at noise level sigma."""
    s = _expand(sigma, x0)
    return (1 - s) * x0 + s * noise, noise - x0


def predicted_x0(x_t: torch.Tensor, v_pred: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return x_t - _expand(sigma, x_t) * v_pred


def flow_matching(v_pred: torch.Tensor, v_target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    per_sample = ((v_pred.float() - v_target.float()) ** 2).flatten(1).mean(1)
    return (per_sample * weight).mean() if weight is not None else per_sample.mean()


def info_nce_pair(pred_a: torch.Tensor, pred_b: torch.Tensor, target_a: torch.Tensor, target_b: torch.Tensor,
                  tau: float = 0.07) -> torch.Tensor:  # fmt: skip
    """Symmetric InfoNCE over features (B, D): for each output, its own target is the positive and the
    pair's other target the negative; the mean of the two cross-entropies."""
    pa, pb, ta, tb = (F.normalize(x.float(), dim=-1) for x in (pred_a, pred_b, target_a, target_b))
    logits_a = torch.stack([(pa * ta).sum(-1), (pa * tb).sum(-1)], dim=1) / tau
    logits_b = torch.stack([(pb * tb).sum(-1), (pb * ta).sum(-1)], dim=1) / tau
    zeros = torch.zeros(pa.shape[0], dtype=torch.long, device=pa.device)
    return 0.5 * (F.cross_entropy(logits_a, zeros) + F.cross_entropy(logits_b, zeros))


def identity(pred: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """1 - cos between face embeddings (B, D), averaged."""
    return (1 - F.cosine_similarity(pred.float(), source.float(), dim=-1)).mean()


@dataclass(frozen=True)
class LossWeights:
    contrastive: float = 1.0  # w_sc (paper default)
    identity: float = 0.1  # w_id (paper default)
    tau: float = 0.07


@dataclass
class LossTerms:
    fm_a: torch.Tensor
    fm_b: torch.Tensor
    contrastive: torch.Tensor
    identity: torch.Tensor
    total: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "fm_a", "fm_b", "contrastive", "identity")}


def symmetric_loss(fm_a: torch.Tensor, fm_b: torch.Tensor, contrastive: torch.Tensor, ident: torch.Tensor,
                   weights: LossWeights = LossWeights()) -> LossTerms:  # fmt: skip
    total = 0.5 * (fm_a + fm_b) + weights.contrastive * contrastive + weights.identity * ident
    return LossTerms(fm_a, fm_b, contrastive, ident, total)
