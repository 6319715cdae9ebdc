"""Stage 8: rewards, the reference policy, ragged-group advantages, and every algorithm's step on a tiny
audio LLM, including a judge endpoint that fails mid-run."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import local.train.rl.stage as stage_module
from helpers.chat_server import ChatServer, chat_answer
from local.bin.rl import main as rl_main
from local.bin.sft import main as sft_main
from local.eval.metrics import js_divergence
from local.models.alm import load_alm
from local.train.rl.losses import group_advantages
from local.train.rl.rewards import ambiguity_format, distribution_rewards, dual_route_reward
from local.train.rl.stage import Reference, advantages_of
from local.utils.hydra import compose
from tests.conftest import make_data_dir

ROOT = Path(__file__).resolve().parents[2]
GOOD_COT = ("Keywords: loud, fast\nStep 1: Text Analysis. Neutral words.\nStep 2: Audio Analysis. Loud.\n"
            "Step 3: Synthesis. Anger leads.\nDistribution: anger:0.75 neutral:0.25")


@pytest.mark.parametrize("text, want", [
    (GOOD_COT, 1.0),
    (GOOD_COT.replace("Step 2", "Part 2"), 0.0),                                   # a step missing
    (GOOD_COT.replace("Step 1", "#").replace("Step 3", "Step 1").replace("#", "Step 3"), 0.0),  # out of order
    (GOOD_COT.replace("anger:0.75", "anger:0.95"), 0.0),                           # does not sum to 1
    (GOOD_COT.rsplit("\n", 1)[0], 0.0),                                            # no answer line
])
def test_ambiguity_format(text, want):
    assert ambiguity_format(text) == want


def test_distribution_reward_is_one_minus_js_bits_plus_format():
    rng = np.random.default_rng(0)
    pred, gold = rng.dirichlet(np.ones(4), 3), rng.dirichlet(np.ones(4), 3)
    got = distribution_rewards(pred, gold, [GOOD_COT, "no format", GOOD_COT], w_fmt=0.5)
    m = (pred + gold) / 2
    js = 0.5 * (pred * np.log2(pred / m)).sum(1) + 0.5 * (gold * np.log2(gold / m)).sum(1)
    np.testing.assert_allclose(got, 1 - js + 0.5 * np.array([1, 0, 1]), atol=1e-9)
    np.testing.assert_allclose(js_divergence(pred, gold), js, atol=1e-9)
    assert distribution_rewards(gold, gold, [GOOD_COT] * 3).tolist() == pytest.approx([2.0] * 3)


def test_dual_route_reward_follows_cogaudio_eq_3_4():
    weights = {"fmt": 0.1, "perception": 0.3, "intent": 0.15, "psychology": 0.15, "strategy": 0.1, "emp": 0.2}
    judged = {"empathy": 0.5, "perception": 1.0, "intent": 0.0, "psychology": 1 / 3, "strategy": 2 / 3}
    tagged = "<thought>sad and slow</thought><response>I am here.</response>"
    want_a = 0.1 * 1 + 0.3 * 1.0 + 0.15 * 0.0 + 0.15 / 3 + 0.1 * 2 / 3 + 0.2 * 0.5
    assert dual_route_reward("A", tagged, judged, weights) == pytest.approx(want_a)
    assert dual_route_reward("A", "untagged", judged, weights) == pytest.approx(want_a - 0.1)
    assert dual_route_reward("B", "I am here.", {"empathy": 0.5}, weights) == 0.5  # Route 2: R_emp alone
    assert dual_route_reward("A", tagged, {"empathy": 0.5}, weights) is None       # the step scores are missing
    assert dual_route_reward("B", "x", None, weights) is None                       # the judge failed
    with pytest.raises(ValueError, match="route"):
        dual_route_reward("C", "x", judged, weights)


@pytest.mark.parametrize("scale", ["group", "none", "batch"])
def test_ragged_advantages_equal_group_advantages_when_groups_are_full(scale):
    rewards = torch.rand(12, dtype=torch.float64)
    want = group_advantages(rewards, 4, scale)
    got = advantages_of(rewards.view(3, 4).tolist(), scale)
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), want)
    ragged = advantages_of([[1.0, 2.0, 3.0], [5.0, 7.0]], "group")  # a dropped rollout leaves a group of 2
    torch.testing.assert_close(torch.tensor(ragged), torch.tensor([-1.0, 0.0, 1.0, -0.7071, 0.7071]), atol=1e-3,
                               rtol=0)


def test_reference_swaps_the_starting_weights_in_and_back():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    model[0].requires_grad_(False)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ref = Reference(model)
    assert set(ref.saved) == {"1.weight", "1.bias"}  # only what training changes is copied
    with torch.no_grad():
        model[1].weight.add_(1.0)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with ref.active(model):
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, start[k])
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, trained[k])


# --- the stage on a tiny audio LLM ----------------------------------------------------------------

EIPS = ("<thought>Emotion perception: the voice is {label}. Intent: to be heard. Psychological modelling: "
        "they need support. Strategy: acknowledge it.</thought><response>I hear that you feel {label}.</response>")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """data/{train,dev} with soft labels and the ambiguity, EIPS and direct-response targets, and a
    stage-6 model trained for two steps on them (the start of every stage-8 run below)."""
    root = tmp_path_factory.mktemp("rl")
    for name in ("train", "dev"):
        shutil.move(make_data_dir(root / f"corpus_{name}", n_spk=2, n_utt=2), root / "data" / name)
        emo = dict(line.split() for line in (root / "data" / name / "utt2emo").read_text().splitlines())
        dist = {u: (f"{e}:0.7500 sadness:0.2500" if e != "sadness" else "sadness:1.0000") for u, e in emo.items()}
        (root / "data" / name / "utt2dist").write_text("".join(f"{u} {d}\n" for u, d in dist.items()))
        with open(root / "data" / name / "targets.jsonl", "w", encoding="utf-8") as f:
            for u, e in emo.items():
                for kind, target in (("ambiguity_cot", GOOD_COT.rsplit("\n", 1)[0] + f"\nDistribution: {dist[u]}"),
                                     ("eips", EIPS.format(label=e)), ("direct_response", f"I hear you, {e}.")):
                    f.write(json.dumps({"utt": u, "type": kind, "target": target, "label": e}) + "\n")
    sft_main(config(root, []))
    return root


def config(root, overrides):
    return compose([f"data_root={root / 'data'}", f"dump_root={root / 'dump'}", f"exp_root={root / 'exp'}",
                    "exp_name=amb", "model.e2v.path=null", "sft.explicit=ambiguity_cot",
                    "sft.implicit=ambiguity_cot", "sft.batch_size=2", "sft.tokenizer_vocab=400",
                    "trainer.max_steps=2", "trainer.max_epochs=null", "trainer.log_every=1", "trainer.progress=false",
                    "trainer.lr=1e-3", "distill.enabled=false", "rl.enabled=true", "rl.group_size=2", "rl.batch_size=2",
                    "rl.sampling.max_new_tokens=12", "rl.valid_batches=1",
                    "seed=5", *overrides])


def rl_records(exp_dir):
    return [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "grpoz", "sapo", "dpo"])
def test_each_algorithm_trains_the_audio_llm(recipe, algorithm):
    exp = recipe / "exp" / "amb" / f"rl_{algorithm}"
    cfg = config(recipe, [f"rl.algorithm={algorithm}", f"rl.exp_dir={exp}", "rl.loss.beta=0.04",
                          "rl.dpo.negative=worst"])
    start = load_alm(recipe / "exp" / "amb" / "sft" / "model").state_dict()
    rl_main(cfg)
    train = [r for r in rl_records(exp) if r["split"] == "train"]
    assert len(train) == 2 and all(math.isfinite(r["loss"]) for r in train)
    key = "js_rollouts" if algorithm == "dpo" else "reward"
    assert all(math.isfinite(r[key]) for r in train)
    if algorithm != "dpo":
        assert all(r["ratio_mean"] == pytest.approx(1.0) for r in train)  # one update per batch: on-policy
    summary = json.loads((exp / "summary.json").read_text())
    assert {"before", "after", "counts"} <= set(summary) and 0 <= summary["after"]["js"] <= 1
    trained = load_alm(exp / "model").state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in start.items())  # the policy moved


@pytest.mark.slow
def test_grpoz_puts_the_gold_trajectory_in_every_group(recipe, monkeypatch):
    seen = []
    policy_loss = stage_module.policy_loss

    def spy(logp, old_logp, advantages, mask, *args, **kwargs):
        seen.append(len(advantages))
        return policy_loss(logp, old_logp, advantages, mask, *args, **kwargs)

    monkeypatch.setattr(stage_module, "policy_loss", spy)
    for algorithm in ("grpo", "grpoz"):
        rl_main(config(recipe, [f"rl.algorithm={algorithm}", f"rl.exp_dir={recipe / 'exp' / f'spy_{algorithm}'}"]))
    assert seen == [4, 4, 6, 6]  # 2 utterances x 2 rollouts, then + 1 gold member per group


@pytest.mark.slow
def test_dr_sapo_survives_a_failing_judge_endpoint(recipe, monkeypatch):
    """A judge that errors or babbles mid-RL: the stage finishes, the rollouts are dropped and counted."""
    calls = []

    def respond(body):
        calls.append(1)
        if len(calls) % 3 == 0:
            return 500, "overloaded"
        if len(calls) % 3 == 1:
            return 200, chat_answer("I would rather not score this.")
        return 200, chat_answer(json.dumps({"empathy": 3, "perception": 4, "intent": 2, "psychology": 3,
                                            "strategy": 2}))

    server = ChatServer(respond)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    exp = recipe / "exp" / "amb" / "rl_dr_sapo"
    try:
        rl_main(config(recipe, ["rl.algorithm=dr_sapo", "rl.reward.kind=dual_route", "rl.target=eips",
                                "rl.route_b=direct_response", f"rl.exp_dir={exp}", "judge=openai",
                                f"judge.base_url={server.url}", "judge.model=judge", "judge.max_retries=1",
                                "judge.backoff=0.01", "judge.workers=1", "judge.timeout=5",
                                f"judge.cache={recipe / 'judge.sqlite'}"]))
    finally:
        server.close()
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["judge"].get("failed", 0) + summary["judge"].get("unparseable", 0) > 0
    assert summary["counts"]["dropped"] > 0
    train = [r for r in rl_records(exp) if r["split"] == "train"]
    assert len(train) == 2 and all(math.isfinite(r["loss"]) for r in train)
    assert (exp / "model" / "trained.pt").is_file()


@pytest.mark.slow
def test_dr_sapo_with_the_offline_judge_scores_both_routes(recipe):
    exp = recipe / "exp" / "amb" / "rl_dr_sapo_offline"
    rl_main(config(recipe, ["rl.algorithm=dr_sapo", "rl.reward.kind=dual_route", "rl.target=eips",
                            "rl.route_b=direct_response", f"rl.exp_dir={exp}", "rl.valid_batches=2"]))
    summary = json.loads((exp / "summary.json").read_text())
    assert {"reward", "reward_A", "reward_B"} <= set(summary["before"]) and summary["counts"].get("dropped", 0) == 0


@pytest.mark.parametrize("system, baselines", [("c2ser", ["text_only", "no_whisper", "no_e2v", "no_cot"]),
                                               ("ambiguity", ["sft_only", "ce_only", "dpo", "grpo"]),
                                               ("cogaudio", ["before_rl"]),
                                               ("reasoning", ["joint", "alt1", "feature_concat", "single_encoder",
                                                             "single_summarize", "single_label_only"])])
@pytest.mark.parametrize("recipe", [None, "mini_lime"])
def test_every_system_and_baseline_config_composes_and_resolves(system, baselines, recipe):
    """What run.sh asks for: experiment/<system> (and the recipe's sizes, its <corpus>_<system> file when it
    has one) with each of its baselines, which are those its score.baselines name."""
    recipe_conf = ROOT / "egs" / "mini_lime" / "conf" if recipe else None
    if recipe and (recipe_conf / "recipe" / f"{recipe}_{system}.yaml").is_file():
        recipe = f"{recipe}_{system}"
    named = compose([f"experiment={system}", "corpus=default"]).score.baselines
    assert sorted({row.baseline for row in named.values()}) == sorted(baselines)
    for baseline in [None, *baselines]:
        cfg = compose([f"experiment={system}", f"recipe={recipe}" if recipe else "corpus=default"]
                      + ([f"baseline={baseline}"] if baseline else []), recipe_conf=recipe_conf)
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
        assert cfg.system == system and cfg.exp_name == (f"{system}_{baseline}" if baseline else system)
        if cfg.rl.enabled:
            assert cfg.rl.algorithm in stage_module.ALGORITHMS


@pytest.mark.slow
def test_validation_is_the_same_in_and_out_of_the_trainer(recipe):
    """The dev reward before and after the stage is computed as the trainer's validations compute it
    (eval mode: no dropout in the read-out), so the numbers compare."""
    exp = recipe / "exp" / "amb" / "rl_eval"
    rl_main(config(recipe, ["rl.algorithm=grpo", f"rl.exp_dir={exp}", "trainer.max_steps=1"]))
    summary = json.loads((exp / "summary.json").read_text())
    last_valid = [r for r in rl_records(exp) if r["split"] == "valid"][-1]
    assert summary["after"]["reward"] == pytest.approx(last_valid["valid_reward"], abs=1e-6)
    assert summary["counted_steps"] == [0, 1]
    rl_main(config(recipe, ["rl.algorithm=grpo", f"rl.exp_dir={exp}", "trainer.max_steps=1"]))  # trained already
    again = json.loads((exp / "summary.json").read_text())
    assert again["before"] == summary["before"] and again["counted_steps"] == [1, 1]  # no rollout counted twice



@pytest.mark.slow
def test_dev_outputs_are_greedy_in_eval_mode_before_during_and_after(recipe, monkeypatch):
    """Every validation (the "before" one too, which runs on a freshly loaded model in train mode)
    decodes without dropout, so the before/after rewards differ by the weights only."""
    seen = []

    def spy(module, batch, prompts, gen_kwargs, ids=False):
        seen.append((gen_kwargs["do_sample"], module.training))
        return real_sample(module, batch, prompts, gen_kwargs, ids)

    real_sample = stage_module.sample
    monkeypatch.setattr(stage_module, "sample", spy)
    exp = recipe / "exp" / "amb" / "rl_modes"
    rl_main(config(recipe, ["rl.algorithm=grpo", f"rl.exp_dir={exp}", "trainer.max_steps=1"]))
    greedy = [training for do_sample, training in seen if not do_sample]
    rollouts = [training for do_sample, training in seen if do_sample]
    assert len(greedy) >= 3 and not any(greedy)  # before, the trainer's validation, after
    assert rollouts and all(rollouts)  # rollouts sample from the policy as it trains


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "sapo"])
def test_stage_8_climbs_a_reward_the_policy_can_reach(recipe, monkeypatch, algorithm):
    """End to end (sampling, scoring, advantages, loss, update): with a reward for short outputs the
    rollouts get shorter.  A sign error or rewards paired with the wrong rollouts would not."""
    monkeypatch.setattr(stage_module.PolicyOptimisation, "rewards",
                        lambda self, module, batch, prompts, texts, gold, routes:
                        [1.0 - len(module.tokenizer(t).input_ids) / 12 for t in texts])
    exp = recipe / "exp" / "amb" / f"rl_climb_{algorithm}"
    rl_main(config(recipe, [f"rl.algorithm={algorithm}", f"rl.exp_dir={exp}", "trainer.max_steps=12",
                            "trainer.lr=3e-3", "rl.group_size=4", "rl.sampling.max_new_tokens=12"]))
    rewards = [r["reward"] for r in rl_records(exp) if r["split"] == "train"]
    assert len(rewards) == 12
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.2


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpoz", "dpo"])
def test_losses_are_computed_on_the_sampled_token_ids(recipe, monkeypatch, algorithm):
    """Rollouts reach the loss as the ids generate() sampled (no re-tokenisation of their text); the gold
    trajectory as its text (its tokens and EOS)."""
    sampled, scored = [], []

    def spy_sample(module, batch, prompts, gen_kwargs, ids=False):
        out = real_sample(module, batch, prompts, gen_kwargs, ids)
        if ids:
            sampled.extend(out[1])
        return out

    def spy_logprobs(model, batch, prompts, responses):
        scored.extend(responses)
        return real_logprobs(model, batch, prompts, responses)

    real_sample, real_logprobs = stage_module.sample, stage_module.token_logprobs
    monkeypatch.setattr(stage_module, "sample", spy_sample)
    monkeypatch.setattr(stage_module, "token_logprobs", spy_logprobs)
    exp = recipe / "exp" / "amb" / f"rl_ids_{algorithm}"
    rl_main(config(recipe, [f"rl.algorithm={algorithm}", f"rl.exp_dir={exp}", "trainer.max_steps=1",
                            "rl.dpo.negative=worst"]))
    rollouts = [r for r in scored if not isinstance(r, str)]
    golds = [r for r in scored if isinstance(r, str)]
    assert rollouts and all(r in sampled for r in rollouts)
    assert golds and all("Distribution:" in g for g in golds)
