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

from typing import Mapping, Sequence

import numpy as np

from local.eval.metrics import js_divergence
from local.eval.judge import format_reward
from local.reasoning.targets import AMBIGUITY_STEPS, parse_distribution_line

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
