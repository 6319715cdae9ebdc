"""The task registry of AudioLLM-Reasoning (ER, SR, ASR, SQA), its question pools, and mini_lime's SQA pairs."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from local.data.kaldi import DataDir, format_qa, parse_qa
from local.reasoning import tasks
from local.reasoning.prompts import load_questions
from local.reasoning.tasks import (SENTIMENTS, TASKS, Task, draw_question, gold_label, pool_questions, reference,
                                   register_task, task_groups, task_labels, task_spec)
from local.utils.hydra import compose

ROOT = Path(__file__).resolve().parents[2]
LABEL_SUFFIX = re.compile(r"\s*\(\$\{labels\}\)\s*$")


def test_the_four_tasks_and_their_groups():
    assert list(TASKS) == ["er", "sr", "asr", "sqa"]
    assert task_groups() == {"emotion": ("er", "sr"), "speech": ("asr", "sqa")}
    er, sr, asr, sqa = (task_spec(n) for n in ("er", "sr", "asr", "sqa"))
    assert (er.label_table, er.wording, er.train_pool, er.eval_pool, er.metric) == \
        ("utt2emo", "emotion", "emotion", "emotion_eval", "accuracy")
    assert (sr.label_table, sr.labels, sr.wording) == ("utt2sentiment", SENTIMENTS, "sentiment (positive, negative, neutral)")
    assert (asr.reference, asr.metric, asr.label_table) == ("text", "wer", None)
    assert (sqa.reference, sqa.train_pool, sqa.eval_pool, sqa.metric) == ("qa", None, None, "judge:sqa")
    with pytest.raises(ValueError, match=r"unknown task 'ser' \(known: er, sr, asr, sqa\)"):
        task_spec("ser")


def test_register_task_adds_and_refuses_a_clash(monkeypatch):
    monkeypatch.setattr(tasks, "TASKS", dict(TASKS))
    assert register_task(task_spec("er")) is tasks.TASKS["er"] and len(tasks.TASKS) == 4  # the same: a no-op
    with pytest.raises(ValueError, match="task 'er' is already registered with another definition"):
        register_task(Task(name="er", group="speech", wording="emotion", label_table="utt2emo"))
    intent = register_task(Task(name="ic", group="emotion", wording="intent", label_table="utt2int",
                                labels=("low", "mid", "high")))
    assert tasks.task_groups() == {"emotion": ("er", "sr", "ic"), "speech": ("asr", "sqa")}
    assert task_spec("ic") is intent and task_labels(intent, ["anger"]) == ("low", "mid", "high")
    assert "ic" not in TASKS  # the registry of other tests is untouched


@pytest.mark.parametrize("kwargs, message", [
    (dict(label_table=None), "exactly one of label_table"),
    (dict(label_table="utt2emo", reference="text"), "exactly one of label_table"),
    (dict(label_table=None, reference="summary"), "reference 'summary' is not one of text, qa"),
    (dict(label_table=None, reference="text", labels=("a",)), "a label set needs a label_table"),
])
def test_a_task_must_say_where_its_gold_is(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Task(name="x", group="speech", wording="x", **kwargs)


def test_task_labels_gold_and_reference():
    assert task_labels(task_spec("er"), ["angry", "sad"]) == ("angry", "sad")
    assert task_labels(task_spec("sr"), ["angry", "sad"]) == SENTIMENTS
    assert task_labels(task_spec("asr"), ["angry"]) is None and task_labels(task_spec("sqa"), ["angry"]) is None
    pairs = [("谁要回家了？", "我妹妹。"), ("When?", "Next month.")]
    data = DataDir({"utt2spk": {"s-1": "s", "s-2": "s"}, "text": {"s-1": " We finally got the keys. ", "s-2": ""},
                    "utt2emo": {"s-1": "happiness", "s-2": "anger"}, "utt2sentiment": {"s-1": "positive"},
                    "utt2qa": {"s-1": format_qa(pairs), "s-2": "[]"}})
    assert gold_label(task_spec("er"), data, "s-1") == "happiness"
    assert gold_label(task_spec("sr"), data, "s-1") == "positive" and gold_label(task_spec("sr"), data, "s-2") is None
    assert gold_label(task_spec("asr"), data, "s-1") is None
    assert reference(task_spec("asr"), data, "s-1") == "We finally got the keys."
    assert reference(task_spec("sqa"), data, "s-1") == pairs and reference(task_spec("sqa"), data, "s-2") == []
    assert reference(task_spec("er"), data, "s-2") == "anger"
    bare = DataDir({"utt2spk": {"s-1": "s"}})
    assert reference(task_spec("sqa"), bare, "s-1") is None and gold_label(task_spec("sr"), bare, "s-1") is None
    data["utt2qa"]["s-2"] = '[["only a question"]]'
    with pytest.raises(ValueError, match="pair 1 is not"):
        reference(task_spec("sqa"), data, "s-2")


def test_training_and_evaluation_pools_are_disjoint():
    pools = load_questions()
    normalise = lambda q: LABEL_SUFFIX.sub("", q).strip().lower()  # noqa: E731
    for task in TASKS.values():
        if task.train_pool is None:
            continue
        train, evaluation = pools[task.train_pool], pools[task.eval_pool]
        assert len(train) >= 5 and len(evaluation) >= 5, task.name
        assert len(set(train)) == len(train) and len(set(evaluation)) == len(evaluation), task.name
        assert not {normalise(q) for q in train} & {normalise(q) for q in evaluation}, task.name
    # the paper lists this one among both its training and its evaluation examples: it is evaluation only
    interpret = "How would you interpret the speaker's emotional state from their speech?"
    assert interpret not in pools["emotion"] and any(q.startswith(interpret) for q in pools["emotion_eval"])
    assert "What emotions do you think the speaker is expressing?" in pools["emotion"]
    # AudioBench style: ER and SR evaluation questions end with the label set
    assert all(LABEL_SUFFIX.search(q) for q in pools["emotion_eval"] + pools["sentiment_eval"])
    assert not any("${" in q for q in pools["emotion"] + pools["sentiment"] + pools["asr"] + pools["asr_eval"])


def test_draw_question_renders_the_labels_and_is_seeded():
    er, sr = task_spec("er"), task_spec("sr")
    labels = ["anger", "happiness", "neutral"]
    drawn = [draw_question(er, "eval", labels, np.random.default_rng(i)) for i in range(40)]
    assert all(q.endswith("(anger, happiness, neutral)") and "$" not in q for q in drawn)
    assert len(set(drawn)) >= 5 and set(drawn) <= set(pool_questions(er, "eval", labels))
    assert draw_question(er, "eval", labels, np.random.default_rng(3)) == drawn[3]
    assert draw_question(sr, "eval", SENTIMENTS, np.random.default_rng(0)).endswith("(positive, negative, neutral)")
    assert draw_question(er, "train", labels, np.random.default_rng(0)) in load_questions()["emotion"]
    assert pool_questions(task_spec("asr"), "train", []) == load_questions()["asr"]
    with pytest.raises(ValueError, match="task 'sqa' has no train question pool"):
        draw_question(task_spec("sqa"), "train", [], np.random.default_rng(0))
    with pytest.raises(ValueError, match="split must be one of train, eval"):
        draw_question(er, "test", labels, np.random.default_rng(0))


# --- mini_lime's SQA pairs (egs/mini_lime/conf/sqa.tsv -> utt2qa) -------------------------------------

def load_prepare():
    spec = importlib.util.spec_from_file_location("mini_lime_prepare", ROOT / "egs/mini_lime/prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mini_lime_corpus():
    cfg = compose(["corpus=mini_lime"], recipe_conf=ROOT / "egs/mini_lime/conf")
    cfg.corpus.texts = str(ROOT / "egs/mini_lime" / cfg.corpus.texts)
    cfg.corpus.sqa = str(ROOT / "egs/mini_lime" / cfg.corpus.sqa)
    return cfg.corpus


def test_mini_lime_has_two_or_three_pairs_per_text_in_its_language():
    prepare, corpus = load_prepare(), mini_lime_corpus()
    texts = {t["id"]: t for t in prepare.read_texts(corpus.texts)}
    pairs = prepare.read_sqa(corpus.sqa, corpus.texts)
    assert set(pairs) == set(texts) and len(texts) == 27
    for text_id, qa in pairs.items():
        assert 2 <= len(qa) <= 3, text_id
        chinese = texts[text_id]["lang"] == "cmn"
        for question, answer in qa:
            assert bool(re.search(r"[\u4e00-\u9fff]", question + answer)) == chinese, (text_id, question)
            assert len(answer.split()) <= 8 or chinese, (text_id, answer)


def test_mini_lime_writes_utt2qa_for_every_utterance():
    prepare, corpus = load_prepare(), mini_lime_corpus()
    renderings = prepare.plan(corpus)
    pairs = prepare.read_sqa(corpus.sqa, corpus.texts)
    utt2qa = prepare.qa_table(renderings, pairs)
    assert set(utt2qa) == {r.utt for r in renderings}
    r = next(r for r in renderings if r.utt.startswith("spk01-fam01-"))
    data = DataDir({"utt2spk": {r.utt: "spk01"}, "utt2qa": {r.utt: utt2qa[r.utt]}})
    assert reference(task_spec("sqa"), data, r.utt) == pairs["fam01"]
    assert all(2 <= len(parse_qa(v)) <= 3 for v in utt2qa.values())


def test_mini_lime_sqa_errors_name_the_file_and_line(tmp_path):
    prepare, corpus = load_prepare(), mini_lime_corpus()
    lines = Path(corpus.sqa).read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "sqa.tsv"
    bad.write_text("\n".join(lines + ["fam99\tWho?\tNobody."]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"sqa.tsv:{len(lines) + 1}: 'fam99' is not a text id of .*texts.tsv"):
        prepare.read_sqa(str(bad), corpus.texts)
    bad.write_text("\n".join(l for l in lines if not l.startswith("work04\t")) + "\n", encoding="utf-8")
    text_line = next(i for i, l in enumerate(Path(corpus.texts).read_text().splitlines(), 1) if l.startswith("work04\t"))
    with pytest.raises(ValueError, match=rf"no question/answer pair for the text 'work04' \(.*texts.tsv:{text_line}\)"):
        prepare.read_sqa(str(bad), corpus.texts)
    bad.write_text("\n".join(lines[:5] + ["fam01\tWho?"]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="sqa.tsv:6: expected three non-empty tab-separated fields"):
        prepare.read_sqa(str(bad), corpus.texts)
