"""Multitask SFT in rounds (local/train/multitask.py) and the per-task questions of stage 9 (local/eval/task_decode.py):
which rows a round trains on, what each row is asked, and stage 6 through its entry point with a schedule of two
rounds, killed in the second round and re-run."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from local.bin.sft import main as sft_main
from local.data.kaldi import DataDir, format_qa
from local.data.shards import write_shards
from local.eval.task_decode import add_task_fields, sqa_pair, task_instruction
from local.models.alm import AudioLLM, load_alm
from local.reasoning.tasks import task_spec
from local.train.multitask import stage_tasks, task_batch, train_instruction
from local.train.rounds import Round
from local.train.sft import target_facts
from local.utils.hydra import compose
from tests.conftest import make_data_dir

TYPES = {"er": "label_only", "sr": "label_only_sr", "asr": "asr", "sqa": "sqa"}
LABELS = ["anger", "sadness", "neutral"]
SPEECH, EMOTION, ALL = (Round(("asr", "sqa"), ("lm",), 1, "s"), Round(("er", "sr"), ("lm",), 1, "e"),
                        Round(("all",), ("lm",), 1, "all"))


def facts() -> dict:
    return {"labels": LABELS, "targets": {t: target_facts(t, LABELS) for t in TYPES.values()}}


def records(utt: str) -> list[dict]:
    return [{"utt": utt, "type": "label_only", "target": "The speaker's speech reflects an anger state."},
            {"utt": utt, "type": "label_only_sr", "target": "The speaker's sentiment is negative."},
            {"utt": utt, "type": "asr", "target": f"words of {utt}"},
            {"utt": utt, "type": "sqa", "target": "one", "question": f"first question of {utt}?"},
            {"utt": utt, "type": "sqa", "target": "two", "question": f"second question of {utt}?"}]


def batch(utts=("u1", "u2", "u3")) -> dict:
    return {"utts": list(utts), "wav": torch.arange(len(utts))[:, None].float(), "meta": [{"utt": u} for u in utts],
            "targets": [records(u) for u in utts]}


def test_a_round_reads_one_row_per_utterance_and_task_of_its_own():
    for rnd, tasks in ((SPEECH, ["asr", "sqa"]), (EMOTION, ["er", "sr"]), (ALL, ["er", "sr", "asr", "sqa"])):
        out = task_batch(batch(), TYPES, rnd, step=0, seed=0, facts=facts())
        assert out["utts"] == [u for u in ("u1", "u2", "u3") for _ in tasks]
        assert out["tasks"] == tasks * 3
        assert out["wav"][:, 0].tolist() == [i for i in range(3) for _ in tasks]  # the rows' own audio
    speech = task_batch(batch(), TYPES, SPEECH, 0, 0, facts())
    asr = [i for i, t in enumerate(speech["tasks"]) if t == "asr"]
    assert [speech["responses"][i] for i in asr] == ["words of u1", "words of u2", "words of u3"]
    train_pool = facts()["targets"]["asr"]["questions"]["train"]
    assert all(speech["prompts"][i] in train_pool for i in asr)
    for i, t in enumerate(speech["tasks"]):  # an SQA row is asked its own record's question, answered by its answer
        if t == "sqa":
            answer = speech["responses"][i]
            assert speech["prompts"][i] == f"{'first' if answer == 'one' else 'second'} question of {speech['utts'][i]}?"


def test_the_draws_follow_seed_and_step_and_cover_every_pair():
    pick = lambda seed, step: [p for p, t in zip(*(lambda o: (o["prompts"], o["tasks"]))(
        task_batch(batch(), TYPES, SPEECH, step, seed, facts()))) if t == "sqa"]
    assert pick(0, 5) == pick(0, 5)                                  # a resumed run draws what it drew
    assert len({tuple(pick(0, s)) for s in range(12)}) > 1           # other steps, other pairs
    assert {"first question of u1?", "second question of u1?"} <= {p for s in range(12) for p in pick(0, s)}


def test_nothing_to_read_and_mismatched_types_are_errors():
    empty = dict(batch(), targets=[[], [], []])
    assert task_batch(empty, TYPES, ALL, 0, 0, facts()) is None
    with pytest.raises(ValueError, match="tasks.sr: target type 'asr' is a target of task 'asr'"):
        stage_tasks(OmegaConf.create({"tasks": {"sr": "asr"}}))
    with pytest.raises(ValueError, match="has no question"):
        train_instruction("sqa", {"utt": "u1", "type": "sqa", "target": "x"}, np.random.default_rng(0), facts())


def test_training_and_evaluation_questions_come_from_disjoint_pools_kept_in_the_facts():
    known = target_facts("label_only_sr", LABELS)
    train, evaluation = known["questions"]["train"], known["questions"]["eval"]
    assert train and evaluation and not set(train) & set(evaluation)
    assert known["task"] == "sr" and target_facts("c2ser_explicit", LABELS).get("task") is None
    ask = task_instruction(known, "label_only_sr", None, seed=0)
    assert {ask(f"u{i}", {}) for i in range(40)} <= set(evaluation)
    assert ask("u7", {}) == ask("u7", {})
    seen = task_instruction(known, "label_only_sr", None, seed=0, split="train")  # decode.questions=train
    assert {seen(f"u{i}", {}) for i in range(40)} <= set(train)


def test_stage9_asks_sqa_its_own_question_and_keeps_the_reference(tmp_path):
    data = DataDir({"utt2spk": {"a": "s", "b": "s"}, "text": {"a": "hello there", "b": "bye"},
                    "utt2emo": {"a": "anger", "b": "neutral"}, "utt2sentiment": {"a": "negative", "b": "neutral"},
                    "utt2qa": {"a": format_qa([("who?", "me"), ("what?", "this")]), "b": format_qa([("why?", "so")])}})
    ask = task_instruction(target_facts("sqa", LABELS), "sqa", data, seed=0)
    recs = [{"utt": u, "hyp": "x"} for u in ("a", "b")]
    add_task_fields(recs, "sqa", data, seed=0)
    assert [ask(r["utt"], {}) for r in recs] == [r["question"] for r in recs]
    assert (recs[0]["question"], recs[0]["ref"]) == sqa_pair(data, task_spec("sqa"), "a", 0)
    assert recs[1]["ref"] == "so" and recs[0]["label"] is None
    sr = [{"utt": "a", "hyp": "x"}]
    add_task_fields(sr, "sr", data, seed=0)
    assert sr[0]["label"] == "negative" and "ref" not in sr[0]
    asr = [{"utt": "b", "hyp": "x"}]
    add_task_fields(asr, "asr", data, seed=0)
    assert asr[0]["ref"] == "bye"


# --- stage 6 with rounds, through its entry point ---------------------------------------------------------

@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("multitask")
    for name, n_utt in (("train", 3), ("dev", 1)):
        shutil.move(make_data_dir(root / f"corpus_{name}", n_spk=2, n_utt=n_utt, labels=LABELS),
                    root / "data" / name)
        data = DataDir.load(root / "data" / name)
        with open(root / "data" / name / "targets.jsonl", "w", encoding="utf-8") as f:
            for utt in data.utts:
                for r in records(utt):
                    f.write(json.dumps(r) + "\n")
        write_shards(root / "data" / name, root / "dump" / name / "shards", 1 << 24,  # stage 4
                     targets_path=root / "data" / name / "targets.jsonl")
    return root


ROUNDS = [{"name": "speech", "tasks": ["speech"], "train": ["speech_encoder", "speech_adapter", "lm"], "epochs": 2},
          {"name": "emotion", "tasks": ["emotion"], "train": ["emotion_encoder", "emotion_adapter", "lm"],
           "epochs": 1}]


def config(root, exp_name):
    cfg = compose(["model=reasoning_tiny", "model.e2v.path=null", "model.feature_norm=false",
                   f"data_root={root / 'data'}", f"dump_root={root / 'dump'}", f"exp_root={root / 'exp'}",
                   f"exp_name={exp_name}", "sft.batch_size=2", "sft.tokenizer_vocab=300", "trainer.save_every=1",
                   "trainer.progress=false", "trainer.log_every=1", "seed=1",
                   "sft.tasks={er: label_only, sr: label_only_sr, asr: asr, sqa: sqa}"])
    cfg.sft.rounds = OmegaConf.create(ROUNDS)
    return cfg


def state(model_dir) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_alm(model_dir).state_dict().items()}


@pytest.mark.slow
def test_stage6_trains_each_round_and_a_killed_run_resumes_in_its_round(recipe, monkeypatch):
    sft_main(config(recipe, "ref"))
    ref = recipe / "exp" / "ref" / "sft"
    assert sorted(p.name for p in (ref / "rounds").iterdir()) == ["0_speech", "1_emotion"]
    for rnd, epochs in (("0_speech", 2), ("1_emotion", 1)):
        records_ = [json.loads(line) for line in (ref / "rounds" / rnd / "metrics.jsonl").read_text().splitlines()]
        assert max(r["epoch"] for r in records_ if r["split"] == "train") + 1 == epochs
    facts_ = (ref / "model" / "training.yaml").read_text()
    assert "questions" in facts_ and "record" in facts_  # pools and SQA's own questions travel with the model

    calls, forward = [], AudioLLM.forward

    def dies_in_round_two(self, batch):
        if self.training:
            calls.append(batch["tasks"] if "tasks" in batch else None)
            if len(calls) == 6:  # 3 utterances, 2 a batch: 2 steps an epoch; round 1 is steps 1-4, round 2 5-6
                raise KeyboardInterrupt
        return forward(self, batch)

    monkeypatch.setattr(AudioLLM, "forward", dies_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        sft_main(config(recipe, "killed"))
    monkeypatch.setattr(AudioLLM, "forward", forward)
    killed = recipe / "exp" / "killed" / "sft"
    assert (killed / "rounds" / "0_speech" / "checkpoints" / "last.pt").is_file() and not (killed / "model").exists()
    sft_main(config(recipe, "killed"))
    a, b = state(ref / "model"), state(killed / "model")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
