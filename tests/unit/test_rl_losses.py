"""Stage 8 losses against TRL's own trainer code on the same tensors, and hand-checked properties."""
from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from helpers.reference import INSTALL, has_sapo, import_trl, require
from local.train.rl.losses import (dpo_loss, group_advantages, k3_kl, kl_to_target, policy_loss, policy_stats,
                                   sapo_gate, sequence_logprobs)

TOL = 1e-6


@pytest.fixture(scope="module")
def trl():
    """TRL's GRPO and DPO trainer modules (helpers/reference.py); a missing TRL fails, never skips."""
    return require("trl", import_trl)


def bare_grpo_trainer(trl, **attrs):
    """A GRPOTrainer that skips __init__ (no model, no dataset): only what the tested methods read."""
    trainer = object.__new__(trl.grpo.GRPOTrainer)
    base = dict(accelerator=SimpleNamespace(device=torch.device("cpu"), process_index=0, gather=lambda x: x),
                model=SimpleNamespace(training=True, is_gradient_checkpointing=False),
                _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                beta=0.0, use_vllm=False, vllm_importance_sampling_correction=False, tools=None)
    for name, value in {**base, **attrs}.items():
        setattr(trainer, name, value)
    return trainer


def trl_advantages(trl, rewards: torch.Tensor, group_size: int, scale: str) -> torch.Tensor:
    """TRL's advantages: GRPOTrainer._generate_and_score_completions with generation and reward stubbed.

    The normalisation is inline in that method, so the method itself runs; _generate returns one
    token per rollout and _calculate_rewards returns the given rewards.
    """
    n = len(rewards)
    ids = [[1]] * n

    def generate(prompts):
        if hasattr(trl.grpo.GRPOTrainer, "get_sapo_token_loss"):  # trl >= 0.26 also returns tool masks and texts
            return ids, ids, None, ["c"] * n, n, None, {}
        return ids, ids, n, None, {}

    trainer = bare_grpo_trainer(
        trl, _generate=generate, _calculate_rewards=lambda *args: rewards.unsqueeze(1),
        processing_class=SimpleNamespace(batch_decode=lambda x, **kw: ["c"] * len(x)),
        args=SimpleNamespace(per_device_train_batch_size=n, steps_per_generation=1, gradient_accumulation_steps=1,
                             gradient_checkpointing_kwargs=None),
        pad_token_id=0, eos_token_id=2, mask_truncated_completions=False, num_iterations=1,
        num_generations=group_size, scale_rewards=scale, reward_weights=torch.ones(1), reward_func_names=["r"],
        _logs={"prompt": [], "completion": [], "rewards": defaultdict(list), "advantages": []})
    return trainer._generate_and_score_completions([{"prompt": "p"} for _ in range(n)])["advantages"]


def trl_policy_loss(trl, loss_type, logp, old_logp, advantages, mask, ref_logp=None, beta=0.0,
                    eps_low=0.2, eps_high=0.2, tau_pos=1.0, tau_neg=1.05) -> tuple[torch.Tensor, dict]:
    """TRL's GRPOTrainer._compute_loss on given per-token log-probs (the model forward is stubbed),
    and the metrics it logged."""
    trainer = bare_grpo_trainer(
        trl, loss_type=loss_type, beta=beta, epsilon_low=eps_low, epsilon_high=eps_high,
        importance_sampling_level="token", top_entropy_quantile=1.0, current_gradient_accumulation_steps=1,
        args=SimpleNamespace(delta=None, sapo_temperature_pos=tau_pos, sapo_temperature_neg=tau_neg,
                             use_bias_correction_kl=False),
        _get_per_token_logps_and_entropies=lambda *args, **kw: (logp, torch.zeros_like(logp)))
    b, t = logp.shape
    inputs = {"prompt_ids": torch.zeros(b, 1, dtype=torch.long), "prompt_mask": torch.ones(b, 1, dtype=torch.long),
              "completion_ids": torch.zeros(b, t, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": advantages, "old_per_token_logps": old_logp}
    if ref_logp is not None:
        inputs["ref_per_token_logps"] = ref_logp
    return trainer._compute_loss(None, inputs), trainer._metrics["train"]


def rollouts(seed: int, groups: int = 3, group_size: int = 4, t: int = 7):
    """Random rewards, log-probs and right-padded masks of groups × group_size rollouts."""
    g = torch.Generator().manual_seed(seed)
    b = groups * group_size
    rewards = torch.rand(b, generator=g)
    rewards[:group_size] = 0.5  # one group where every member scores the same
    old = -torch.rand(b, t, generator=g) * 3
    logp = old + 0.4 * torch.randn(b, t, generator=g)  # ratios well inside and outside the clip band
    ref = old + 0.2 * torch.randn(b, t, generator=g)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return rewards, logp, old, ref, mask


# --- against TRL ------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_equal_trl(trl, scale):
    rewards = rollouts(0)[0]
    ours, theirs = group_advantages(rewards, 4, scale), trl_advantages(trl, rewards, 4, scale)
    assert (ours - theirs).abs().max().item() < TOL
    assert ours[:4].abs().max().item() == 0.0  # the tied group carries no signal


def require_sapo(trl, kind):
    if kind == "sapo" and not has_sapo(trl):
        pytest.fail(f"trl {trl.version} has no loss_type='sapo' (added in trl 0.26; the test extra needs trl>=0.26): "
                    f"{INSTALL}", pytrace=False)


@pytest.mark.parametrize("kind", ["grpo", "sapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_advantages_and_policy_loss_equal_trl(trl, kind, beta):
    require_sapo(trl, kind)
    rewards, logp, old, ref, mask = rollouts(1)
    kw = dict(eps_low=0.2, eps_high=0.28, tau_pos=1.0, tau_neg=1.05)
    ours_logp, trl_logp = logp.clone().requires_grad_(), logp.clone().requires_grad_()
    ours = policy_loss(ours_logp, old, group_advantages(rewards, 4), mask, kind=kind, ref_logp=ref, beta=beta, **kw)
    theirs, _ = trl_policy_loss(trl, kind, trl_logp, old, trl_advantages(trl, rewards, 4, "group"), mask,
                                ref_logp=ref if beta else None, beta=beta, **kw)
    ours.backward()
    theirs.backward()
    assert abs(ours.item() - theirs.item()) < TOL
    assert (ours_logp.grad - trl_logp.grad).abs().max().item() < TOL


def test_policy_stats_clip_fraction_equals_trl_log(trl):
    rewards, logp, old, _, mask = rollouts(2)
    adv = group_advantages(rewards, 4)
    _, logged = trl_policy_loss(trl, "grpo", logp, old, adv, mask)
    stats = policy_stats(logp, old, adv, mask)
    assert stats["clip_fraction"] == pytest.approx(logged["clip_ratio/region_mean"][0], abs=TOL)
    assert 0.05 < stats["clip_fraction"] < 0.95


def test_dpo_loss_equals_trl_sigmoid(trl):
    g = torch.Generator().manual_seed(3)
    logps = [-50 * torch.rand(16, generator=g, dtype=torch.float64) for _ in range(4)]
    trainer = object.__new__(trl.dpo.DPOTrainer)
    for name, value in dict(accelerator=SimpleNamespace(device=torch.device("cpu")), beta=0.1, label_smoothing=0.0,
                            reference_free=False, f_divergence_type=trl.dpo.FDivergenceType.REVERSE_KL,
                            f_divergence_params=None).items():
        setattr(trainer, name, value)
    losses, _, _ = trainer.dpo_loss(*logps, loss_type="sigmoid")
    assert abs(dpo_loss(*logps, beta=0.1).item() - losses.mean().item()) < TOL


def test_sequence_logprobs_equal_trl_selective_log_softmax(trl):
    g = torch.Generator().manual_seed(4)
    logits = 5 * torch.randn(3, 6, 50, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 50, (3, 6), generator=g)
    theirs = trl.utils.selective_log_softmax(logits, labels)
    assert (sequence_logprobs(logits, labels) - theirs).abs().max().item() < TOL
    # bf16 logits are upcast: the same numbers as TRL on the upcast logits, not bf16 arithmetic
    bf16 = logits.to(torch.bfloat16)
    ours = sequence_logprobs(bf16, labels)
    assert ours.dtype == torch.float32
    assert (ours - trl.utils.selective_log_softmax(bf16.float(), labels)).abs().max().item() < 1e-5


# --- by hand ------------------------------------------------------------------------------------

def test_sequence_logprobs_zero_outside_the_mask_whatever_the_label():
    logits = torch.randn(2, 4, 10)
    labels = torch.tensor([[1, 2, -100, -100], [3, 4, 5, 6]])
    out = sequence_logprobs(logits, labels)
    assert out[0, 2:].eq(0).all() and out[1].lt(0).all()
    assert out[0, 1].item() == pytest.approx(torch.log_softmax(logits[0, 1], -1)[2].item(), abs=TOL)
    with pytest.raises(ValueError, match="not"):
        sequence_logprobs(logits, labels[:, :3])


def test_group_advantages_by_hand_and_bad_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 4.0])  # groups of 3
    std = torch.tensor([1.0, 0.0, 0.0]).std()  # unbiased: sqrt(1/3)
    expected = torch.tensor([2 / 3, -1 / 3, -1 / 3, -4 / 3, -1 / 3, 5 / 3])
    expected[:3] /= std + 1e-4
    expected[3:] /= torch.tensor([1.0, 2.0, 4.0]).std() + 1e-4
    assert torch.allclose(group_advantages(rewards, 3), expected, atol=TOL)
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(rewards, 4)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(rewards, 3, scale="rank")


def one_token_loss(r: float, adv: float, **kw) -> tuple[float, float]:
    """Loss and d loss / d logp of a single token with ratio r."""
    logp = torch.tensor([[math.log(r)]], dtype=torch.float64, requires_grad=True)
    loss = policy_loss(logp, torch.zeros(1, 1, dtype=torch.float64), torch.tensor([adv], dtype=torch.float64),
                       torch.ones(1, 1, dtype=torch.bool), **kw)
    loss.backward()
    return loss.item(), logp.grad.item()


@pytest.mark.parametrize("r, adv, clipped", [
    (1.27, 1.0, False), (1.29, 1.0, True),     # A > 0: the clip acts above 1 + eps_high = 1.28
    (0.5, 1.0, False),                         # ... and never below (a worse action is not protected)
    (0.81, -1.0, False), (0.79, -1.0, True),   # A < 0: the clip acts below 1 - eps_low = 0.8
    (2.0, -1.0, False),                        # ... and never above
])
def test_grpo_clip_acts_exactly_where_expected(r, adv, clipped):
    loss, grad = one_token_loss(r, adv, kind="grpo", eps_low=0.2, eps_high=0.28)
    bound = 1.28 if adv > 0 else 0.8
    assert loss == pytest.approx(-(bound if clipped else r) * adv, abs=1e-12)
    assert grad == pytest.approx(0.0 if clipped else -r * adv, abs=1e-12)  # d(-rA)/dlogp = -rA
    stats = policy_stats(torch.tensor([[math.log(r)]]), torch.zeros(1, 1),
                         torch.tensor([adv]), torch.ones(1, 1), eps_low=0.2, eps_high=0.28)
    assert stats["clip_fraction"] == float(clipped) and stats["ratio_mean"] == pytest.approx(r, rel=1e-6)


@pytest.mark.parametrize("adv, tau", [(1.0, 1.0), (-1.0, 1.05), (0.5, 1.0)])
def test_sapo_gate_has_unit_gradient_weight_on_policy(adv, tau):
    loss, grad = one_token_loss(1.0, adv, kind="sapo", tau_pos=1.0, tau_neg=1.05)
    assert loss == pytest.approx(-(2 / tau) * adv, abs=1e-12)  # f(1) = (4/τ)·σ(0) = 2/τ
    assert grad == pytest.approx(-adv, abs=1e-12)              # f'(1)·r = 1: the plain policy gradient
    # off-policy the weight 4σ(1-σ)·r of the paper decays smoothly instead of dropping to 0 at a clip
    for r in (0.5, 1.5, 3.0):
        s = torch.sigmoid(torch.tensor(tau * (r - 1), dtype=torch.float64)).item()
        assert one_token_loss(r, adv, kind="sapo")[1] == pytest.approx(-4 * s * (1 - s) * r * adv, abs=1e-12)


def test_sapo_temperature_follows_the_sign_of_the_advantage():
    r = torch.tensor(2.0, dtype=torch.float64)
    pos, _ = one_token_loss(2.0, 1.0, kind="sapo", tau_pos=1.0, tau_neg=3.0)
    neg, _ = one_token_loss(2.0, -1.0, kind="sapo", tau_pos=1.0, tau_neg=3.0)
    assert pos == pytest.approx(-sapo_gate(r, 1.0).item(), abs=1e-12)
    assert neg == pytest.approx(sapo_gate(r, 3.0).item(), abs=1e-12)


@pytest.mark.parametrize("kind", ["grpo", "sapo"])
def test_masked_tokens_do_not_contribute(kind):
    _, logp, old, ref, _ = rollouts(5, groups=1, group_size=3, t=6)
    adv = torch.tensor([1.0, -0.5, 0.2])
    short = [logp[:, :4].clone().requires_grad_(), old[:, :4], ref[:, :4]]
    padded = [logp.clone(), old.clone(), ref.clone()]
    for x in padded:
        x[:, 4:] = torch.tensor([float("nan"), 1e4])  # garbage where the mask is 0
    padded[0].requires_grad_()
    mask = torch.arange(6)[None, :].expand(3, 6) < 4
    kw = dict(kind=kind, beta=0.1)
    a = policy_loss(short[0], short[1], adv, torch.ones(3, 4), ref_logp=short[2], **kw)
    b = policy_loss(padded[0], padded[1], adv, mask, ref_logp=padded[2], **kw)
    a.backward()
    b.backward()
    assert abs(a.item() - b.item()) < 1e-6
    assert torch.allclose(padded[0].grad[:, :4], short[0].grad, atol=1e-6)
    assert padded[0].grad[:, 4:].eq(0).all()


def test_k3_kl_is_non_negative_and_zero_at_the_reference():
    _, logp, _, ref, mask = rollouts(6)
    assert k3_kl(logp, ref).min().item() >= 0
    assert k3_kl(logp, logp).abs().max().item() == 0.0
    adv = torch.randn(len(logp))
    with_kl = policy_loss(logp, logp, adv, mask, ref_logp=logp, beta=0.5)
    assert with_kl.item() == pytest.approx(policy_loss(logp, logp, adv, mask).item(), abs=1e-7)
    assert policy_stats(logp, logp, adv, mask, ref_logp=ref)["kl"] > 0
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(logp, logp, adv, mask, beta=0.1)


def test_dpo_loss_is_log2_when_the_policy_is_the_reference():
    x = torch.randn(5)
    assert dpo_loss(x, x - 1, x, x - 1).item() == pytest.approx(float(torch.log(torch.tensor(2.0))), abs=1e-7)


def test_kl_to_target_against_torch_kl_div_with_zero_gold_entries():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    gold = torch.tensor([[0.5, 0.5, 0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0, 0, 0],
                         [0.2, 0.2, 0.2, 0.2, 0.2, 0, 0], [0, 0, 0, 0, 0, 0.25, 0.75]], dtype=torch.float64)
    ours = kl_to_target(logits, gold)
    expected = F.kl_div(torch.log_softmax(logits, -1), gold, reduction="batchmean")
    assert abs(ours.item() - expected.item()) < 1e-12
    assert abs(kl_to_target(torch.log_softmax(logits, -1), gold).item() - ours.item()) < 1e-12  # log-probs work too
    assert kl_to_target(gold.log(), gold).item() == pytest.approx(0.0, abs=1e-12)  # -inf log-probs where gold is 0
    masked = logits.detach().clone()
    masked[1, 3] = float("-inf")  # a class the model rules out and annotators never chose
    masked.requires_grad_()
    loss = kl_to_target(masked, gold)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(masked.grad).all()
    with pytest.raises(ValueError, match="probability"):
        kl_to_target(logits, gold * 2)
