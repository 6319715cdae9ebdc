"""Stage 7's target schedules, observed in real training: which target each optimizer step trained on.

C²SER's ``linear`` schedule: the probability that a batch trains on the explicit (reasoning) target
decays linearly from 1 at the first step to 0 at the last.  CogAudio's ``mix``: explicit and implicit
1:1.  Each test runs stage 7 (local/bin/distill.py) on the tiny recipe of tests/helpers/sft_recipe.py
and reads the responses the model was trained on (its forward in training mode) and what the
trainer logged (metrics.jsonl), then checks them against the schedule's formula, within binomial
tolerances where the draw is random.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from helpers.sft_recipe import (EXPLICIT, IMPLICIT, spy_training, stage_overrides, target_type_of, train_records,
                                write_recipe)
from local.bin.distill import main as distill_main
from local.utils.hydra import compose

STEPS = 80     # optimizer steps of a run (4 training utterances, batches of 2: 40 epochs)
WINDOW = 20    # steps per logged window (trainer.log_every)
Z = 3.0        # binomial tolerance in standard deviations


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    return write_recipe(tmp_path_factory.mktemp("schedules"))


_runs: dict = {}


def stage7(recipe, exp_name: str, schedule: str, seed: int,
           trainer=(f"trainer.max_steps={STEPS}", f"trainer.log_every={WINDOW}")) -> list[str]:
    """Stage 7's overrides: from a fresh tiny model (no stage 6), ``schedule``, ``seed``, ``trainer``."""
    return stage_overrides(recipe, exp_name, "distill.init_from=null", f"distill.schedule={schedule}", f"seed={seed}",
                           *trainer)


def batches(recipe, exp_name: str, schedule: str, seed: int, *trainer: str) -> list[dict]:
    """Run stage 7 (once per arguments); every batch the model trained on, in order."""
    key = (str(recipe), exp_name, schedule, seed, trainer)
    if key not in _runs:
        with pytest.MonkeyPatch.context() as mp:
            seen = spy_training(mp)
            distill_main(compose(stage7(recipe, exp_name, schedule, seed, *([trainer] if trainer else []))))
        _runs[key] = seen
    return _runs[key]


def train(recipe, exp_name: str, schedule: str, seed: int, *trainer: str) -> list[str]:
    """Run stage 7 (once per arguments); the target type of each training batch, in order."""
    kinds = target_type_of(recipe)
    types = []
    for batch in batches(recipe, exp_name, schedule, seed, *trainer):
        batch_types = {kinds[r] for r in batch["responses"]}
        assert len(batch_types) == 1, f"a batch mixes target types: {batch['responses']}"  # batch-level sampling
        types.append(batch_types.pop())
    return types


def p_linear(step: int, total: int) -> float:
    return 1.0 - step / (total - 1)


def within_binomial(observed: int, probs: list[float]) -> tuple[bool, str]:
    """Whether a count of independent Bernoulli(p_i) successes is within Z sd (+1/2) of its mean."""
    mean, sd = sum(probs), math.sqrt(sum(p * (1 - p) for p in probs))
    ok = abs(observed - mean) <= Z * sd + 0.5
    return ok, f"{observed} explicit of {len(probs)}, expected {mean:.2f} +- {Z * sd + 0.5:.2f}"


def test_linear_schedule_decays_the_explicit_share_from_one_to_zero(recipe):
    types = train(recipe, "linear", "linear", 3)
    assert len(types) == STEPS  # one batch per optimizer step
    explicit = [t == EXPLICIT for t in types]
    assert set(types) == {EXPLICIT, IMPLICIT}
    # p = 1 at the first step and 0 at the last: no chance involved
    assert explicit[0] and not explicit[-1]
    quarter = STEPS // 4
    assert np.mean(explicit[:quarter]) >= 0.7, f"first quarter: {types[:quarter]}"
    assert np.mean(explicit[-quarter:]) <= 0.3, f"last quarter: {types[-quarter:]}"
    shares = []
    for start in range(0, STEPS, WINDOW):
        probs = [p_linear(s, STEPS) for s in range(start, start + WINDOW)]
        ok, msg = within_binomial(sum(explicit[start:start + WINDOW]), probs)
        assert ok, f"steps {start}-{start + WINDOW - 1}: {msg}"
        shares.append(np.mean(explicit[start:start + WINDOW]))
    assert shares[0] > shares[-1]
    # what the trainer logs: the mean of 1 - step/(total-1) over each window's steps
    logged = train_records(recipe / "exp" / "linear" / "distill")
    assert [r["step"] for r in logged] == list(range(WINDOW, STEPS + 1, WINDOW))
    for r in logged:
        want = np.mean([p_linear(s, STEPS) for s in range(r["step"] - WINDOW, r["step"])])
        assert r["p_explicit"] == pytest.approx(want, abs=1e-9), r


def test_mix_schedule_trains_half_explicit_half_implicit_in_every_window(recipe):
    types = train(recipe, "mix", "mix", 3)
    assert len(types) == STEPS
    explicit = [t == EXPLICIT for t in types]
    ok, msg = within_binomial(sum(explicit), [0.5] * STEPS)
    assert ok, f"whole run: {msg}"
    for start in range(0, STEPS, WINDOW):
        window = types[start:start + WINDOW]
        assert set(window) == {EXPLICIT, IMPLICIT}, f"steps {start}-{start + WINDOW - 1}: {window}"
        ok, msg = within_binomial(sum(explicit[start:start + WINDOW]), [0.5] * WINDOW)
        assert ok, f"steps {start}-{start + WINDOW - 1}: {msg}"
    # the mix is a 1:1 draw per step, not an alternation or a fixed pattern
    assert any(a == b for a, b in zip(types, types[1:]))
    logged = train_records(recipe / "exp" / "mix" / "distill")
    assert len(logged) == STEPS // WINDOW and all(r["p_explicit"] == pytest.approx(0.5) for r in logged)


@pytest.mark.slow
def test_the_draw_is_reproducible_and_follows_the_seed(recipe):
    first = train(recipe, "mix", "mix", 3)
    again = train(recipe, "mix_again", "mix", 3)
    other = train(recipe, "mix_seed4", "mix", 4)
    assert again == first
    assert other != first  # 80 fair draws agreeing by chance: 2^-80


@pytest.mark.slow
def test_a_resumed_run_draws_what_the_uninterrupted_run_drew(recipe, monkeypatch):
    """Killed after 50 steps with checkpoints every 20, re-run: it resumes at step 40 and trains on the
    same targets, prompts and utterances, step for step, as the run that was never interrupted."""
    from local.models.alm import AudioLLM

    reference = batches(recipe, "mix", "mix", 3)
    overrides = stage7(recipe, "mix_resumed", "mix", 3,
                       (f"trainer.max_steps={STEPS}", f"trainer.log_every={WINDOW}", "trainer.save_every=20"))
    seen = spy_training(monkeypatch)
    forward = AudioLLM.forward

    def dies_in_step_51(self, batch, *args, **kwargs):
        if self.training and len(seen) == 50:
            raise KeyboardInterrupt
        return forward(self, batch, *args, **kwargs)

    monkeypatch.setattr(AudioLLM, "forward", dies_in_step_51)
    with pytest.raises(KeyboardInterrupt):
        distill_main(compose(overrides))
    assert len(seen) == 50 and seen == reference[:50]
    seen.clear()
    monkeypatch.setattr(AudioLLM, "forward", forward)  # the spy alone
    distill_main(compose(overrides))
    assert len(reference) == STEPS
    assert seen == reference[40:]
    logged = train_records(recipe / "exp" / "mix_resumed" / "distill")
    assert [r["step"] for r in logged] == list(range(WINDOW, STEPS + 1, WINDOW))


@pytest.mark.parametrize("stop", ["grad_accum=2", "max_epochs_before_max_steps"])
def test_linear_schedule_reaches_implicit_at_the_last_step_whatever_ends_the_stage(recipe, stop):
    """20 optimizer steps either way: 10 epochs of 2 batches with max_steps=40 left above them, or 20 epochs
    of 2 batches accumulated into one step."""
    extra = {"grad_accum=2": ("trainer.max_steps=null", "trainer.max_epochs=20", "trainer.grad_accum=2"),
             "max_epochs_before_max_steps": ("trainer.max_steps=40", "trainer.max_epochs=10")}[stop]
    name = f"linear_{stop.replace('=', '')}"
    types = train(recipe, name, "linear", 3, "trainer.log_every=1", *extra)  # replaces max_steps and log_every
    logged = train_records(recipe / "exp" / name / "distill")
    assert len(logged) == 20
    assert logged[0]["p_explicit"] == pytest.approx(1.0)
    assert [r["p_explicit"] for r in logged] == pytest.approx([p_linear(s, 20) for s in range(20)], abs=1e-9)
    per_step = len(types) // 20
    assert types[:per_step] == [EXPLICIT] * per_step and types[-per_step:] == [IMPLICIT] * per_step


def test_a_pool_question_is_the_utterance_s_own_draw_whichever_rank_holds_it():
    """Under torchrun each rank holds some rows of the global batch (split="rows"): a row's question from the
    pool must not depend on which rows are beside it, or N processes would train on other prompts than one."""
    from local.reasoning.prompts import load_questions
    from local.train.sft import select_rows, sft_batch

    utts = [f"u{i}" for i in range(8)]
    batch = {"utts": utts, "meta": [{} for _ in utts],
             "targets": [[{"type": "summarize", "target": f"t{i}"}] for i in range(8)]}
    whole = sft_batch(batch, "summarize", step=5, seed=3)
    halves = [sft_batch(select_rows(batch, rows), "summarize", step=5, seed=3) for rows in (range(0, 8, 2),
                                                                                              range(1, 8, 2))]
    assert whole["prompts"][0::2] == halves[0]["prompts"] and whole["prompts"][1::2] == halves[1]["prompts"]
    assert set(whole["prompts"]) <= set(load_questions()["emotion"]) and len(set(whole["prompts"])) > 2
    assert sft_batch(batch, "summarize", step=6, seed=3)["prompts"] != whole["prompts"]  # a new draw each step
