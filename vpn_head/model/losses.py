"""The VPN training losses (paper eq. 5-6).

``L = lambda1 * L_C + (1 - lambda1) * L_e + lambda2 * L_A`` for the full ``vpn`` variant, with L_C the
cross-entropy, L_e the embedding loss and L_A the attention regulariser. The other variants keep only the
terms they have:

- ``attention`` (paper l2, attention without the embedding loss): ``L = L_C + lambda2 * L_A``; L_C keeps its
  full weight because no embedding term shares it.
- ``i3d`` (paper l1): ``L = L_C``.

Terms a variant lacks are returned as 0-tensors so every variant gives the same keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vpn_head.model.config import EMBEDDING_LOSSES, VPNConfig
from vpn_head.model.vpn import VPNOutput


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(softmax(p) || softmax(q)), (N,)."""
    log_p = F.log_softmax(p_logits, dim=1)  # (N, D)
    log_q = F.log_softmax(q_logits, dim=1)  # (N, D)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)  # (N,)


def contrastive_loss(f_e: torch.Tensor, p_e: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between normalised video and pose embeddings: sample i's pose must be closer (cosine) to
    its own video than to the batch's other videos, and the other way round. Unlike the Euclidean loss it has no
    minimum where every embedding is the same vector. A batch of one has no negatives and gives 0 (still connected
    to both embeddings, so DDP sees every parameter used). The negatives are the (micro-)batch's own: the
    end-to-end fine-tune's per-GPU batches of a few clips give few negatives."""
    if f_e.shape[0] < 2:
        return (f_e.sum() + p_e.sum()) * 0.0
    similarity = F.normalize(f_e, dim=1) @ F.normalize(p_e, dim=1).T / temperature  # (N, N)
    target = torch.arange(f_e.shape[0], device=f_e.device)  # (N,)
    return (F.cross_entropy(similarity, target) + F.cross_entropy(similarity.T, target)) / 2


def embedding_loss(f_e: torch.Tensor, p_e: torch.Tensor, kind: str, temperature: float = 0.1) -> torch.Tensor:
    """Distance between the video and pose embeddings, averaged over the batch.

    Args:
        f_e: video embedding (N, D).
        p_e: pose embedding (N, D).
        kind: ``euclid``: ``||f_e/|f_e| - P_e/|P_e|||^2`` (paper eq. 5); ``l1_squared``: ``(sum_d |f_e - P_e|)^2``
            (the authors' code: their L1 distance layer trained by MSE towards 0); ``kl_fe_pe``: KL(f_e || P_e);
            ``kl_pe_fe``: KL(P_e || f_e); ``bikl``: the sum of both. For KL each embedding becomes a
            distribution by a softmax over its D entries. ``contrastive``: ``contrastive_loss``.
        temperature: of the ``contrastive`` loss.

    Returns:
        Scalar loss.
    """
    if kind not in EMBEDDING_LOSSES:
        raise ValueError(f"embedding loss kind must be one of {EMBEDDING_LOSSES}, got {kind!r}")
    if f_e.shape != p_e.shape or f_e.dim() != 2:
        raise ValueError(f"f_e and p_e must both be (N, D); got {tuple(f_e.shape)} and {tuple(p_e.shape)}")
    if kind == "euclid":
        return (F.normalize(f_e, dim=1) - F.normalize(p_e, dim=1)).square().sum(dim=1).mean()
    if kind == "contrastive":
        return contrastive_loss(f_e, p_e, temperature)
    if kind == "l1_squared":
        return (f_e - p_e).abs().sum(dim=1).square().mean()
    if kind == "kl_fe_pe":
        return _kl(f_e, p_e).mean()
    if kind == "kl_pe_fe":
        return _kl(p_e, f_e).mean()
    return (_kl(f_e, p_e) + _kl(p_e, f_e)).mean()


def attention_regulariser(a_s: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """L_A = mean over samples j of ``||A_S(j)||_2 + sum_t (1 - A_T(j, t))^2``.

    The first term is the L2 norm of sample j's whole spatial map (S * S values): it keeps the sigmoid spatial
    attention sparse. The second sums ``(1 - A_T)^2`` over the T steps of sample j: with the softmax constraint
    it is smallest when the temporal weight is spread over time, so it keeps A_T from collapsing onto one step.

    Args:
        a_s: spatial attention (N, S, S) or (N, S * S).
        a_t: temporal attention (N, T).

    Returns:
        Scalar regulariser.
    """
    spatial = a_s.flatten(1).norm(dim=1)  # (N,)
    temporal = (1 - a_t).square().sum(dim=1)  # (N,)
    return (spatial + temporal).mean()


def attention_regulariser_batch_sum(a_s: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """The authors' L_A (``attention_reg="batch_sum"``): their Keras activity regulariser ``(1 - sum(A))^2`` on each
    attention output, the sum over the whole batch tensor: ``(1 - sum A_S)^2 + (1 - sum A_T)^2``. With A_T a softmax,
    sum A_T is the batch size, so its term is a constant without gradient.

    Args:
        a_s: spatial attention (N, S, S) or (N, S * S).
        a_t: temporal attention (N, T), summing to 1 per sample.

    Returns:
        Scalar regulariser (before ``lambda2``).
    """
    return (1 - a_s.sum()).square() + (1 - a_t.sum()).square()


def vpn_loss(out: VPNOutput, labels: torch.Tensor, config: VPNConfig) -> dict[str, torch.Tensor]:
    """Total training loss of ``config.variant`` and its terms (see the module doc for the weighting).

    Args:
        out: the head's output.
        labels: class indices (N,), int64.
        config: supplies the variant, the embedding loss kind and lambda1/lambda2.

    Returns:
        ``{"total", "classification", "embedding", "attention"}``, each a scalar tensor.
    """
    n = out.logits.shape[0]
    if labels.shape != (n,) or labels.dtype != torch.long:
        raise ValueError(f"labels must be int64 of shape ({n},); got {labels.dtype} {tuple(labels.shape)}")
    zero = out.logits.new_zeros(())
    classification = F.cross_entropy(out.logits, labels)
    if config.variant == "i3d":
        return {"total": classification, "classification": classification, "embedding": zero, "attention": zero}
    if out.attention_spatial is None or out.attention_temporal is None:
        raise ValueError(f"variant {config.variant!r} needs the attention maps, but the output has none")
    a_t = out.attention_temporal
    regulariser = attention_regulariser_batch_sum if config.attention_reg == "batch_sum" else attention_regulariser
    attention = regulariser(out.attention_spatial, a_t / a_t.sum(dim=1, keepdim=True))  # on softmax(z2)
    if config.variant == "attention":
        total = classification + config.lambda2 * attention
        return {"total": total, "classification": classification, "embedding": zero, "attention": attention}
    if out.f_e is None or out.p_e is None:
        raise ValueError("variant 'vpn' needs the embeddings f_e and p_e, but the output has none")
    embedding = embedding_loss(out.f_e, out.p_e, config.embedding_loss, config.embedding_temperature)
    total = config.lambda1 * classification + (1 - config.lambda1) * embedding + config.lambda2 * attention
    return {"total": total, "classification": classification, "embedding": embedding, "attention": attention}
