"""A fifth system is configs plus one module (README, "Adding a system"): nothing of ours is edited.

The test writes, outside the repository, what a user adding a system writes: a recipe dir whose ``conf/``
holds the system's experiment yaml (and the recipe's sizes for it, which name the plugin for the data
stages), and one Python module beside it that registers the system's target
type (written from the data, with its own format check and its own instruction file) and its own reward
kind.  ``run.sh --system toy`` then runs every stage on the fake CREMA-D at smoke size: stage 3 writes the
toy targets, stage 6 trains on them, stage 9 decodes with the toy instruction, stage 10 scores.  The
checks are on what each stage wrote, so a registry that ignored the plugin would fail here.
"""
from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from helpers import smoke_recipe

ROOT = Path(__file__).resolve().parents[2]

PLUGIN = '''\
"""The toy system: one target type written from the data, and a reward kind (both registered on import)."""
from pathlib import Path

from local.reasoning.targets import TargetType, register_target_type
from local.train.rl.rewards import RewardKind, register_reward

INSTRUCTION = str(Path(__file__).resolve().parent / "toy_instruction.txt")


def answer(data, utt, task):
    return [{"target": f"Answer: {data['utt2emo'][utt]}."}]


def check(text, transcript=None):
    return None if text.strip().startswith("Answer:") else "does not start with 'Answer:'"


register_target_type("toy_answer", TargetType(from_data=answer, instruction=INSTRUCTION, check=check))
register_reward("toy_length", RewardKind(score=lambda po, module, batch, prompts, texts, gold, routes:
                                          [-len(t) / 100 for t in texts]))
'''

EXPERIMENT = '''\
# @package _global_
# The toy system: SFT on its own target type, no distillation, GRPO with its own reward; decoded with its
# own instruction.
system: toy
plugins: [toy_system]
sft:
  schedule: explicit
  explicit: toy_answer
  implicit: toy_answer
distill:
  enabled: false
rl:
  enabled: true
  algorithm: grpo
  target: toy_answer
  reward: {kind: toy_length}
decode:
  model_dir: ${rl.exp_dir}/model
  modes: [answer]
  prompts: {answer: toy_answer}
  max_new_tokens: {toy_answer: 8}
score:
  baselines: {}
  attributes: false
'''


# The data stages are shared by every system and read no experiment yaml: the recipe's sizes for this system
# (conf/recipe/<corpus>_<system>.yaml, which run.sh picks for --system toy and hands every stage) tell stage 3
# about the plugin and its type.
RECIPE = '''\
# @package _global_
defaults: [smoke]
plugins: [toy_system]
targets:
  types: [toy_answer]
'''


@pytest.fixture
def toy_recipe(tmp_path) -> Path:
    recipe = tmp_path / "toy"
    (recipe / "conf" / "experiment").mkdir(parents=True)
    (recipe / "conf" / "corpus").mkdir()
    (recipe / "conf" / "corpus" / "crema_d.yaml").write_text(
        (ROOT / "egs" / "crema_d" / "conf" / "corpus" / "crema_d.yaml").read_text())
    (recipe / "conf" / "experiment" / "toy.yaml").write_text(EXPERIMENT)
    (recipe / "conf" / "recipe").mkdir()
    (recipe / "conf" / "recipe" / "crema_d_toy.yaml").write_text(RECIPE)
    (recipe / "toy_system.py").write_text(PLUGIN)
    (recipe / "toy_instruction.txt").write_text("# Source: the toy system's own.\nWhich emotion? Say: Answer: <label>.\n")
    (recipe / "run.sh").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        set -euo pipefail
        cd "$(dirname "${{BASH_SOURCE[0]}}")"
        export EMOREASON_RECIPE=crema_d
        exec {ROOT}/run.sh --train_set train --dev_set dev --test_sets test "$@"
        """))
    (recipe / "run.sh").chmod(0o755)
    return recipe


def test_a_fifth_system_in_config_plus_one_module_runs_every_stage(toy_recipe, tmp_path):
    before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    corpus = smoke_recipe.build(tmp_path / "db")
    env = dict(os.environ, CREMA_D=str(corpus))
    out = subprocess.run([str(toy_recipe / "run.sh"), "--system", "toy", "--nj", "1"],
                         env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]

    records = [json.loads(line) for line in (toy_recipe / "data" / "train" / "targets.jsonl").read_text().splitlines()]
    assert records and {r["type"] for r in records} == {"toy_answer"}
    assert all(r["target"] == f"Answer: {r['label']}." for r in records)       # the plugin's writer, checked
    training = (toy_recipe / "exp" / "toy" / "sft" / "model" / "training.yaml").read_text()
    assert "Which emotion? Say: Answer: <label>." in training                  # the plugin's instruction file
    summary = json.loads((toy_recipe / "exp" / "toy" / "rl" / "summary.json").read_text())
    assert -1 < summary["after"]["reward"] < 0                                  # the plugin's reward: -len / 100
    timing = json.loads((toy_recipe / "exp" / "toy" / "decode_test_answer" / "timing.json").read_text())
    assert timing["target"] == "toy_answer" and timing["instruction"] == "Which emotion? Say: Answer: <label>."
    results = json.loads((toy_recipe / "exp" / "toy" / "results.json").read_text())["tables"]["test"]
    assert results["answer"]["n"] == timing["n"] > 0
    assert "| answer |" in out.stdout                                          # stage 10's table, printed
    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert after == before                                                     # nothing of ours was edited
