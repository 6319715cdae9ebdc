"""Rewards of stage 8: what a rollout is worth, as plain functions of its text and read-out distribution.

Two reward families, one per paper:

* ``distribution`` (ambiguity Eq. 6): R = (1 − JS(p̂ ‖ p)) + w_fmt·R_fmt, with JS in bits (so the
  first term lies in [0, 1]) between the distribution read from the rollout's class-name logits
  and the soft label, and R_fmt = 1 when the rollout has the Table 1 steps and a parsable
  "Distribution:" line (the answer position the read-out follows).
* ``dual_route`` (CogAudio DR-SAPO, Eq. 3-4): a rollout of Prompt A (explicit EIPS) earns
  w_fmt·R_fmt + Σ_k w_k·R_cot,k + w_emp·R_emp, one of Prompt B (direct response) R_emp alone.
  R_cot,k and R_emp come from a judge (local/eval/judge.py), rescaled to [0, 1]; a judge that fails
  gives None, and the rollout is dropped rather than scored 0 (a 0 would teach the policy that a
  judge outage means a bad answer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from omegaconf import OmegaConf

from local.eval.metrics import js_divergence
from local.eval.judge import format_reward
from local.reasoning.checks import AMBIGUITY_STEPS, parse_distribution_line

ROUTES = ("A", "B")  # CogAudio Prompt A (explicit EIPS reasoning) and Prompt B (direct response)


def ambiguity_format(text: str) -> float:
    """1.0 when a rollout follows the ambiguity CoT protocol (Table 1 steps in order, then a valid
    "Distribution:" line), else 0.0."""
    lowered = text.lower()
    positions = [lowered.find(step.lower()) for step in AMBIGUITY_STEPS]
    if min(positions) < 0 or positions != sorted(positions):
        return 0.0
    try:
        parse_distribution_line(text)
    except ValueError:
        return 0.0
    return 1.0


def distribution_rewards(pred: np.ndarray, gold: np.ndarray, texts: Sequence[str],
                         w_fmt: float = 1.0) -> np.ndarray:
    """Ambiguity Eq. 6 for N rollouts: pred/gold [N, K] distributions over the same labels."""
    match = 1.0 - js_divergence(pred, gold)
    return match + w_fmt * np.array([ambiguity_format(t) for t in texts])


def dual_route_reward(route: str, text: str, judged: Mapping[str, float] | None,
                      weights: Mapping[str, float]) -> float | None:
    """CogAudio Eq. 3-4 for one rollout; ``judged`` holds the judge's scores rescaled to [0, 1]
    (``empathy`` and, for route A, the ``eips`` rubric's step scores, keyed as in ``weights``:
    perception, intent, psychology, strategy); None when the judge gave nothing usable."""
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    if judged is None or "empathy" not in judged:
        return None
    if route == "B":
        return float(judged["empathy"])
    steps = [k for k in weights if k not in ("fmt", "emp")]
    if any(k not in judged for k in steps):
        return None
    return (weights["fmt"] * format_reward(text) + sum(weights[k] * judged[k] for k in steps)
            + weights["emp"] * judged["empathy"])


# --- the registry: one entry per rl.reward.kind ---------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class RewardKind:
    """What stage 8 knows of one reward (``rl.reward.kind``): a new reward is one entry (a plugin calls
    :func:`register_reward`), not a new branch in the stage."""
    # (stage, module, batch, prompts, texts, gold [N, K], routes) -> a reward per rollout, None to drop it;
    # ``stage`` is the running local.train.rl.stage.PolicyOptimisation (its read(), judged(), stage config)
    score: Callable[..., list[float | None]]
    reads_distribution: bool = False  # scores the class-name read-out: GRPOz / DPO compare with the gold by it
    dual_route: bool = False          # rollouts alternate Prompt A (rl.target) and Prompt B (rl.route_b)
    needs_judge: bool = False         # asks cfg.judge (the stage then reads the judge's config keys)


def _distribution(po, module, batch, prompts, texts, gold, routes) -> list[float]:
    pred = po.read(module, batch, prompts, texts).exp().float().cpu().numpy()
    return distribution_rewards(pred, gold.numpy(), texts, po.stage.reward.w_fmt).tolist()


def _dual_route(po, module, batch, prompts, texts, gold, routes) -> list[float | None]:
    weights = OmegaConf.to_container(po.stage.reward.weights, resolve=True)
    return [dual_route_reward(r, t, s, weights) for r, t, s in zip(routes, texts, po.judged(batch, texts, routes))]


REWARDS: dict[str, RewardKind] = {
    "distribution": RewardKind(score=_distribution, reads_distribution=True),     # ambiguity Eq. 6
    "dual_route": RewardKind(score=_dual_route, dual_route=True, needs_judge=True),  # CogAudio Eq. 3-4
}


def register_reward(name: str, kind: RewardKind) -> RewardKind:
    """Add a reward kind (a system's plugin module calls this); a second, different one of a name is an error."""
    if REWARDS.get(name, kind) is not kind:
        raise ValueError(f"reward kind '{name}' is registered already")
    REWARDS[name] = kind
    return kind


def reward_spec(name: str) -> RewardKind:
    if name not in REWARDS:
        raise ValueError(f"rl.reward.kind must be one of {', '.join(REWARDS)}, got {name!r}")
    return REWARDS[name]
