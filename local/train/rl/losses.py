"""Losses of stage 8 (GRPO, SAPO, DPO) and of the ambiguity objective, as pure tensor functions.

They take log-probabilities, rewards and masks, never a model, so the trainer is free to batch its
forward passes as it likes and the tests can check each loss number for number against TRL's own
GRPOTrainer / DPOTrainer code on the same tensors (tests/unit/test_rl_losses.py).

Shapes and reduction follow TRL so that results stay comparable with published recipes:
logp, old_logp, ref_logp and mask are [B, T] over the completion tokens, advantages are [B], and
a per-token loss is averaged over each sequence's valid tokens, then over the sequences (TRL
loss_type "grpo" and "sapo"), so a long rollout weighs no more than a short one.  A sequence with
no valid token still counts in the mean over sequences with a loss of 0, as in TRL.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SCALES = ("group", "batch", "none")
KINDS = ("grpo", "sapo")
# Added to the reward std (TRL's value) so that a group whose members all score the same gets
# advantages of 0 rather than 0/0.
STD_EPS = 1e-4


def _at_least_float32(x: Tensor) -> Tensor:
    """bf16/fp16 lose the small differences these losses are made of; float64 is kept for tests."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def sequence_logprobs(logits: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """log p(labels[b, t]) from logits already aligned with the labels: [B, T, V] and [B, T] -> [B, T].

    One sequence at a time: a float32 log_softmax of a whole bf16 batch would hold a second
    [B, T, V] tensor (GiBs at a 150k vocabulary); row by row the extra memory is one [T, V]
    (without grad, as for rollouts and the reference; with grad autograd keeps what any
    log_softmax keeps).  Positions outside ``mask`` (default: labels >= 0, i.e. not the -100
    ignore index) are 0, whatever id they hold.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} are not [B, T, V] and [B, T]")
    valid = labels >= 0 if mask is None else mask.bool()
    ids = labels.masked_fill(~valid, 0).unsqueeze(-1)
    rows = [torch.log_softmax(_at_least_float32(row), dim=-1).gather(-1, row_ids).squeeze(-1)
            for row, row_ids in zip(logits, ids)]
    return torch.stack(rows).masked_fill(~valid, 0.0)


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group") -> Tensor:
    """(R − group mean) / (std + 1e-4) for rewards laid out group after group, [N] -> [N].

    The std is the unbiased (n − 1) one, as TRL computes it with ``Tensor.std``.  ``scale``:
    "group" divides by each group's std (GRPO), "batch" by the std of all N rewards (TRL
    scale_rewards="batch", which keeps easy and hard prompts on one scale), "none" only centres
    (Dr. GRPO).  GRPOz passes groups of G + 1 with the gold trajectory in each.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if rewards.dim() != 1 or group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size} (>= 2)")
    grouped = rewards.view(-1, group_size)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    if scale == "none":
        return centred
    if scale == "group":
        std = grouped.std(dim=1).repeat_interleave(group_size)
    else:
        std = rewards.std().expand_as(rewards)
    return centred / (std + STD_EPS)


def sapo_gate(ratio: Tensor, tau: Tensor | float) -> Tensor:
    """SAPO's soft gate (4/τ)·σ(τ(r − 1)), used in place of the ratio.

    Its gradient weight d f(r)/d log π = 4·σ(1 − σ)·r is 1 on-policy (r = 1) for every τ, like
    the plain policy gradient, and decays smoothly off-policy instead of dropping to 0 at a clip.
    """
    return torch.sigmoid(tau * (ratio - 1)) * (4 / tau)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(π ‖ π_ref): exp(d) − d − 1 with d = ref − logp; ≥ 0, 0 iff equal."""
    diff = ref_logp - logp
    return torch.exp(diff) - diff - 1


def _valid_tokens(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    if logp.dim() != 2 or old_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask "
                         f"{tuple(mask.shape)} must all be the same [B, T]")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages {tuple(advantages.shape)} must be [B] = [{logp.shape[0]}]")
    return mask.bool()


def _sequence_then_batch_mean(per_token: Tensor, valid: Tensor) -> Tensor:
    per_sequence = (per_token * valid).sum(-1) / valid.sum(-1).clamp(min=1)
    return per_sequence.mean()


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, kind: str = "grpo",
                eps_low: float = 0.2, eps_high: float = 0.2, tau_pos: float = 1.0, tau_neg: float = 1.05,
                ref_logp: Tensor | None = None, beta: float = 0.0) -> Tensor:
    """GRPO (ambiguity Eq. 7) or SAPO (CogAudio Stage III) loss of one batch of rollouts.

    ratio r = exp(logp − old_logp) per token; "grpo": −min(r·A, clip(r, 1 − eps_low, 1 + eps_high)·A);
    "sapo": −sapo_gate(r, τ)·A with τ = tau_pos where A > 0 and tau_neg otherwise (TRL
    loss_type="sapo", trl >= 0.26: the gate replaces r rather than multiplying it).  With beta > 0
    beta·k3_kl(logp, ref_logp) is added to every token before averaging.  old_logp and ref_logp
    are treated as constants.  Masked positions are zeroed first, so padding may hold anything.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    valid = _valid_tokens(logp, old_logp, advantages, mask)
    logp = logp.masked_fill(~valid, 0.0)
    ratio = torch.exp(logp - old_logp.detach().masked_fill(~valid, 0.0))
    adv = advantages.detach().unsqueeze(1).to(ratio.dtype)
    if kind == "grpo":
        clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
        per_token = -torch.min(ratio * adv, clipped * adv)
    else:
        tau = torch.full_like(adv, tau_neg).masked_fill(adv > 0, tau_pos)
        per_token = -sapo_gate(ratio, tau) * adv
    if beta != 0.0:
        if ref_logp is None or ref_logp.shape != logp.shape:
            raise ValueError("beta != 0 needs ref_logp of the same [B, T] shape as logp")
        per_token = per_token + beta * k3_kl(logp, ref_logp.detach().masked_fill(~valid, 0.0))
    return _sequence_then_batch_mean(per_token, valid)


@torch.no_grad()
def policy_stats(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, eps_low: float = 0.2,
                 eps_high: float = 0.2, ref_logp: Tensor | None = None) -> dict[str, float]:
    """What to log about a policy step, as means over all valid tokens of the batch.

    ratio_mean: mean r.  clip_fraction: tokens whose r lies outside [1 − eps_low, 1 + eps_high]
    on the side the advantage pushes it (TRL's clip_ratio/region_mean); under GRPO the clip
    zeroes their gradient, under SAPO no hard clip acts and the same count says how far
    off-policy the batch is.  kl: mean k3 estimate (0 without ref_logp).
    """
    valid = _valid_tokens(logp, old_logp, advantages, mask)
    n = valid.sum().clamp(min=1)
    ratio = torch.exp((logp - old_logp).masked_fill(~valid, 0.0))
    adv = advantages.unsqueeze(1)
    clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    kl = 0.0
    if ref_logp is not None:
        kl = ((k3_kl(logp, ref_logp).masked_fill(~valid, 0.0)).sum() / n).item()
    return {"ratio_mean": ((ratio * valid).sum() / n).item(),
            "clip_fraction": ((clipped & valid).sum() / n).item(),
            "kl": kl}


def dpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor, ref_rejected_logps: Tensor,
             beta: float = 0.1) -> Tensor:
    """Sigmoid DPO (Rafailov et al. 2023; ambiguity Eq. 4): −log σ(β[(π_c − π_r) − (ref_c − ref_r)]).

    Inputs are [B] log-probabilities of whole responses (sums over their tokens); the result is
    the batch mean.  The reference terms are constants.
    """
    logits = (chosen_logps - rejected_logps) - (ref_chosen_logps - ref_rejected_logps).detach()
    return -F.logsigmoid(beta * logits).mean()


def kl_to_target(scores: Tensor, target: Tensor) -> Tensor:
    """Forward KL(p_gold ‖ p_model) over the candidate labels, batch mean (ambiguity Eq. 2–3).

    ``scores`` [B, K] may be logits or log-probabilities: log_softmax leaves log-probabilities
    unchanged, so one code path serves both.  ``target`` [B, K] holds the soft labels; a class
    with gold probability 0 adds nothing (0·log 0 = 0), even where the model gives it −inf.
    Forward KL is mass-covering: the model is pushed to keep every class annotators chose.
    """
    if scores.dim() != 2 or target.shape != scores.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and target {tuple(target.shape)} must both be [B, K]")
    log_q = torch.log_softmax(_at_least_float32(scores), dim=-1)
    p = target.detach().to(log_q.dtype)
    if (p < 0).any() or not torch.allclose(p.sum(-1), torch.ones_like(p[:, 0]), atol=1e-3):
        raise ValueError("target rows must be probability distributions (non-negative, summing to 1)")
    cross = torch.where(p > 0, p * log_q, torch.zeros_like(log_q))
    return (torch.xlogy(p, p) - cross).sum(-1).mean()
