"""Stage 10 on a multi-task system (AudioLLM-Reasoning): the WER of the ASR task, the SQA judge and its
offline stand-in, each task's row, and the paper-style task tables.  Decode dirs of the four tasks are
written by hand with outputs whose scores were worked out by hand (in the comments beside them)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import jiwer
import pytest
from omegaconf import OmegaConf

from local.bin.score import main as score_main
from local.eval.asr_metrics import asr_tokens, normalise as asr_normalise, wer_scores
from local.eval.decode import write_decode_dir
from local.eval.judge import RUBRICS, Judge, JudgeItem, normalise, offline_grounded, offline_sqa, overlap_f1
from local.eval.task_tables import COLUMNS, check_task_tables
from local.utils.hydra import compose
from local.utils.paths import baseline_entries, baseline_rows, left_out_baselines

# --- WER ------------------------------------------------------------------------------------------


def test_normalisation_drops_case_and_punctuation_and_splits_cjk_into_characters():
    assert asr_normalise("Don’t STOP, “now”!") == "dont stop   now  "
    assert asr_tokens("Hello, World! I don't know.") == ["hello", "world", "i", "dont", "know"]
    # full-width CJK punctuation is punctuation; each ideograph is a token; full-width letters are ASCII
    assert asr_tokens("今天天气很好。你呢？ＯＫ") == ["今", "天", "天", "气", "很", "好", "你", "呢", "ok"]
    assert asr_tokens("我用 Python 写代码") == ["我", "用", "python", "写", "代", "码"]


@pytest.mark.parametrize("ref, hyp, errors, ref_words", [
    ("The cat sat on the mat.", "the cat sat on a mat", 1, 6),     # one substitution; case and "." are not errors
    ("今天天气很好。", "今天天汽很好", 1, 6),                           # one character substituted
    ("hello world", "hello world again", 1, 2),                      # one insertion
    ("one two three four", "one three", 2, 4),                       # two deletions
    ("我喜欢 jazz music", "我喜欢 jazz", 1, 5),                       # mixed: 3 characters + 2 words, 1 deletion
    ("", "uh huh", 2, 0),                                            # talking over silence: two insertions
])
def test_wer_of_hand_counted_pairs(ref, hyp, errors, ref_words):
    got = wer_scores([{"utt": "u", "ref": ref, "hyp": hyp}])
    assert (got["errors"], got["ref_words"], got["n"]) == (errors, ref_words, 1)
    assert got["wer"] == (errors / ref_words if ref_words else None)


def test_wer_is_corpus_level_not_a_mean_of_utterance_rates():
    records = [{"utt": "a", "ref": "good morning", "hyp": "good evening"},              # 1 of 2
               {"utt": "b", "ref": "see you at the station at nine", "hyp": "see you at the station at nine"},
               {"utt": "c", "ref": None, "hyp": "no reference: not scored"}]
    got = wer_scores(records)
    assert got == {"wer": 1 / 9, "n": 2, "errors": 1, "ref_words": 9, "substitutions": 1, "deletions": 0,
                   "insertions": 0}
    assert got["wer"] != (1 / 2 + 0 / 7) / 2


def test_wer_equals_jiwers_on_plain_space_separated_text():
    rng = random.Random(3)
    vocab = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    refs = [" ".join(rng.choices(vocab, k=rng.randint(1, 12))) for _ in range(40)]
    hyps = []
    for ref in refs:
        words = [w for w in ref.split() if rng.random() > 0.15]
        words = [rng.choice(vocab) if rng.random() < 0.2 else w for w in words]
        hyps.append(" ".join(words + rng.choices(vocab, k=rng.randint(0, 2))))
    got = wer_scores([{"utt": str(i), "ref": r, "hyp": h} for i, (r, h) in enumerate(zip(refs, hyps))])
    assert 0.1 < got["wer"] < 0.6
    assert got["wer"] == pytest.approx(jiwer.wer(refs, hyps))


# --- the SQA judge and its offline stand-in ------------------------------------------------------------

@pytest.mark.parametrize("answer, reference, f1, score", [
    ("A red car.", "the red car", 1.0, 5),                         # articles dropped: identical
    ("the red car", "a red car parked outside", 2 / 3, 3),          # P 1, R 1/2: 3.33 -> 3
    ("the red car", "a red car parked", 0.8, 4),                    # P 1, R 2/3
    ("x y", "y z", 0.5, 3),                                         # 2.5 rounds half up
    ("The garden.", "in the kitchen", 0.0, 0),
    ("在北京", "北京", 0.8, 4),                                        # characters are tokens: P 2/3, R 1
])
def test_offline_sqa_is_five_times_the_token_overlap_f1(answer, reference, f1, score):
    assert overlap_f1(answer, reference) == pytest.approx(f1)
    assert offline_sqa(JudgeItem(utt="q", output=answer, reference=reference)) == {"sqa": float(score)}


def test_sqa_rubric_reads_a_rating_0_to_5_and_normalises_as_audiobench():
    spec = RUBRICS["sqa"]
    assert (spec.low, spec.high) == (0, 5)
    assert spec.parse("Explanation: the reference says ten, the model says ten.\nRating: 4") == {"sqa": 4.0}
    with pytest.raises(ValueError, match="0-5"):
        spec.parse("Rating: 6")
    assert 100 * normalise({"sqa": 2.6}, "sqa")["sqa"] == pytest.approx(2.6 * 20)  # AudioBench: mean x 20
    scores = Judge(None).score([JudgeItem(utt="a", output="", reference="at noon"),
                                JudgeItem(utt="b", output="At noon.", reference="at noon")], "sqa")
    assert scores == [{"sqa": 0.0}, {"sqa": 5.0}]  # nothing answered: the floor, without asking anyone


def test_the_grounded_stand_in_reads_a_sentiment_items_output_for_sentiments():
    text = "we won the game"
    output = 'Saying "we won the game" sounds positive.'
    sentiment = JudgeItem(utt="s", output=output, label="positive", text=text,
                          labels=("positive", "negative", "neutral"))
    assert offline_grounded(sentiment) == {"groundedness": 2.0, "relevance": 2.0}
    # read for emotions, "positive" is no label: the relevance rule would call it wrong
    assert offline_grounded(JudgeItem(utt="s", output=output, label="positive", text=text))["relevance"] == 0.0


# --- a multi-task system end to end ------------------------------------------------------------------

ER_LABELS = ["anger", "happiness", "neutral", "sadness"]
SR_LABELS = ["positive", "negative", "neutral"]
# (utt, gold, transcript, main's output, label-only baseline's output)
ER = [("u1", "anger", "get out of my room",
       'The speaker says "get out of my room" sharply, so the emotion is anger.', "anger"),  # right; G2 R2
      ("u2", "happiness", "we won the game", 'Hearing "we won the game", the emotion is happiness.',
       "happiness"),                                                                        # right; G2 R2
      ("u3", "sadness", "i miss her so much", 'The words "see you tomorrow" suggest the emotion is neutral.',
       "neutral"),                                                                          # wrong; G0 R0
      ("u4", "neutral", "the bus comes at noon", "The emotion is neutral.", "neutral"),     # right; no quote
      ("u5", "anger", "stop lying to me", "The emotion is sadness.", "anger"),              # wrong; no quote
      ("u6", "sadness", "nothing ever works out", 'She says "nothing works out", the emotion is anger.',
       "neutral")]                                                                          # wrong; G1 R0
# main: WA 3/6; quotes 4/6; groundedness (2+2+0+1)/4 = 1.25 -> 62.5; relevance (2+2+0+0)/4 = 1 -> 50
# label only: WA 4/6 (u1 u2 u4 u5)
SR = [("s1", "positive", "we won the game", 'Saying "we won the game" sounds positive.', "positive"),  # G2 R2
      ("s2", "negative", "stop lying to me", "The sentiment is negative.", "negative"),
      ("s3", "neutral", "the bus comes at noon", "The sentiment is positive.", "negative"),
      ("s4", "negative", "i miss her so much", 'The line "i miss her" is negative.', "negative")]       # G2 R2
# main: WA 3/4, quotes 2/4, groundedness 100, relevance 100; label only: WA 3/4
ASR = [("a1", "The cat sat on the mat.", "the cat sat on a mat"),        # 1 of 6
       ("a2", "今天天气很好。", "今天天汽很好"),                             # 1 of 6
       ("a3", "Hello world", "hello world again")]                        # 1 of 2: main WER 3/14
SQA = [("q1", "What colour is the car?", "the red car", "A red car."),                  # 5
       ("q2", "Where are they?", "in the kitchen", "The garden."),                     # 0
       ("q3", "What is outside?", "red car parked outside", "the red car"),            # 3
       ("q4", "When does the bus come?", "at noon", "")]                               # 0 (empty)
# main: mean 2 -> 40; the baseline answers "I do not know" to all: 0


def write_task_decodes(exp: Path, label_only: bool, set_name: str = "t1") -> None:
    """decode_<set>_<task>/ of the four tasks, in the shape stage 9 writes for a multi-task system."""
    def write(task, records, target, labels, prompt):
        timing = {"n": len(records), "seconds": 0.1 * len(records), "sec_per_utt": 0.1, "tokens_per_utt": 9.0,
                  "set": set_name, "mode": task, "task": task, "target": target, "labels": labels}
        write_decode_dir(exp / f"decode_{set_name}_{task}",
                         [{"task": task, "prompt": prompt, "lang": "en", **r} for r in records], timing)

    pick = -1 if label_only else -2
    write("er", [{"utt": u, "hyp": r[pick], "label": gold, "text": text} for u, gold, text, *r in ER],
          "elaborate", ER_LABELS, "What emotion does the speaker express? Explain.")
    write("sr", [{"utt": u, "hyp": r[pick], "label": gold, "text": text} for u, gold, text, *r in SR],
          "elaborate_sr", SR_LABELS, "Is the sentiment positive, negative or neutral? Explain.")
    write("asr", [{"utt": u, "hyp": ref if label_only else hyp, "label": None, "text": ref, "ref": ref}
                  for u, ref, hyp in ASR], "asr", None, "Transcribe the speech.")
    write("sqa", [{"utt": u, "hyp": "I do not know" if label_only else hyp, "label": None, "text": "...",
                   "question": question, "ref": ref} for u, question, ref, hyp in SQA], "sqa", None, "")


TABLES = {
    "table2": {"title": "Table 2 (ER / SR / SQA)", "experiments": ["main", "label_only"],
               "columns": ["er", "sr", "emotion_avg", "sqa", "overall", "asr_wer"]},
    "table4": {"title": "Table 4 (reasoning quality)", "experiments": ["main"],
               "columns": ["quotation_er", "quotation_sr", "quotation", "groundedness_er", "groundedness",
                           "relevance"]},
}


def task_cfg(tmp_path: Path, *overrides: str):
    exp_root = tmp_path / "exp"
    write_task_decodes(exp_root / "reasoning", label_only=False)
    write_task_decodes(exp_root / "reasoning_label_only", label_only=True)
    cfg = compose([f"data_root={tmp_path / 'data'}", f"exp_root={exp_root}", "system=reasoning", "test_sets=[t1]",
                   f"score.exp_dir={exp_root / 'reasoning'}", "score.attributes=false",
                   "decode.modes=[er,sr,asr,sqa]", "score.judge_rubrics=[grounded]", "judge=offline", *overrides])
    cfg.score.baselines = {"label_only": {"baseline": "label_only", "modes": ["er", "sr", "asr", "sqa"]}}
    cfg.score.task_tables = TABLES
    return cfg, exp_root / "reasoning"


def test_each_task_row_has_its_metric_and_the_tables_pivot_them(tmp_path):
    cfg, exp = task_cfg(tmp_path)
    score_main(cfg)
    document = json.loads((exp / "results.json").read_text())
    rows = document["tables"]["t1"]
    assert sorted(rows) == ["asr", "er", "label_only_asr", "label_only_er", "label_only_sqa", "label_only_sr",
                            "sqa", "sr"]
    assert {name: (row["task"], row["experiment"]) for name, row in rows.items()} == {
        "er": ("er", "main"), "sr": ("sr", "main"), "asr": ("asr", "main"), "sqa": ("sqa", "main"),
        **{f"label_only_{t}": (t, "label_only") for t in ("er", "sr", "asr", "sqa")}}

    er, sr = rows["er"], rows["sr"]
    assert er["wa"] == pytest.approx(3 / 6) and er["labels"] == ER_LABELS and er["n"] == 6
    assert sr["wa"] == pytest.approx(3 / 4) and sr["labels"] == SR_LABELS
    assert rows["label_only_er"]["wa"] == pytest.approx(4 / 6)
    assert er["quotes"]["rate"] == pytest.approx(4 / 6) and sr["quotes"]["rate"] == pytest.approx(2 / 4)
    assert er["judge"] == {"backend": "offline", "groundedness": 1.25, "relevance": 1.0,
                           "quotation": pytest.approx(4 / 6), "coverage": pytest.approx(er["judge"]["coverage"]),
                           "n_judged": 6}
    assert sr["judge"]["groundedness"] == 2.0 and sr["judge"]["relevance"] == 2.0

    asr = rows["asr"]
    assert "ua" not in asr and (asr["wer"], asr["errors"], asr["ref_words"], asr["n"]) == (3 / 14, 3, 14, 3)
    assert rows["label_only_asr"]["wer"] == 0.0
    assert "judge" not in asr  # the grounded rubric is for the labelled tasks

    sqa = rows["sqa"]
    assert sqa["judge"] == {"backend": "offline", "sqa": 2.0, "n_judged": 4} and sqa["score"] == 40.0
    assert rows["label_only_sqa"]["score"] == 0.0 and "groundedness" not in sqa["judge"]

    values = document["task_tables"]["table2"]["sets"]["t1"]
    assert values["main"] == pytest.approx({"er": 50.0, "sr": 75.0, "emotion_avg": 62.5, "sqa": 40.0,
                                            "overall": 55.0, "asr_wer": 100 * 3 / 14})
    assert values["label_only"] == pytest.approx({"er": 200 / 3, "sr": 75.0, "emotion_avg": (200 / 3 + 75) / 2,
                                                  "sqa": 0.0, "overall": (200 / 3 + 75) / 3, "asr_wer": 0.0})
    assert document["task_tables"]["table4"]["sets"]["t1"]["main"] == pytest.approx({
        "quotation_er": 200 / 3, "quotation_sr": 50.0, "quotation": (200 / 3 + 50) / 2,
        "groundedness_er": 62.5, "groundedness": (62.5 + 100) / 2, "relevance": 75.0})

    md = (exp / "results.md").read_text()
    assert md.index("### t1") < md.index("### Table 2 (ER / SR / SQA): t1") < md.index("### Table 4")
    assert ("| experiment | ER | SR | ER/SR avg | SQA[offline] | Overall[offline] | ASR WER % |\n"
            "|---|---:|---:|---:|---:|---:|---:|\n"
            "| main | 50.00 | 75.00 | 62.50 | 40.00 | 55.00 | 21.43 |\n"
            "| label_only | 66.67 | 75.00 | 70.83 | 0.00 | 47.22 | 0.00 |") in md
    assert ("| experiment | Quotation ER | Quotation SR | Quotation | Groundedness ER[offline] | "
            "Groundedness[offline] | Relevance[offline] |") in md
    assert "| main | 66.67 | 50.00 | 58.33 | 62.50 | 81.25 | 75.00 |" in md
    assert md.count("[offline] = the offline judge, a rule stand-in") == 2 and "not a model judge" in md
    assert "Overall = mean of ER, SR and SQA" in md and "SQA = mean 0-5 judge score x 20" in md
    # the per-set table shows the WER and the raw judge means, the stand-in named
    assert "WER %" in md and "sqa[offline]" in md and "groundedness[offline]" in md


def test_a_baseline_run_sh_did_not_train_is_left_out_of_the_tables_saying_so(tmp_path):
    cfg, exp = task_cfg(tmp_path, "baselines=[]")
    score_main(cfg)
    document = json.loads((exp / "results.json").read_text())
    assert sorted(document["tables"]["t1"]) == ["asr", "er", "sqa", "sr"]
    assert list(document["task_tables"]["table2"]["sets"]["t1"]) == ["main"]
    assert document["task_tables"]["table2"]["left_out"] == ["label_only"]
    assert "not in this run (set to null in score.baselines, or not trained by run.sh): label_only" in (
        exp / "results.md").read_text()


def test_task_tables_that_cannot_be_made_fail_before_scoring(tmp_path):
    cfg, exp = task_cfg(tmp_path)
    cfg.score.task_tables = {"t": {"title": "T", "experiments": ["main", "no_such"], "columns": ["er"]}}
    with pytest.raises(ValueError, match=r"experiment\(s\) \['no_such'\] are neither 'main' nor entries"):
        score_main(cfg)
    cfg.score.task_tables = {"t": {"title": "T", "experiments": ["main"], "columns": ["er", "accuracy"]}}
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['accuracy'\]"):
        score_main(cfg)
    cfg.score.judge_rubrics = []
    cfg.score.task_tables = {"t": {"title": "T", "experiments": ["main"], "columns": ["relevance"]}}
    with pytest.raises(ValueError, match="need the judge rubric 'grounded'"):
        score_main(cfg)
    assert not (exp / "results.json").exists()


def test_an_experiment_without_task_rows_is_an_error_naming_it(tmp_path):
    cfg, exp = task_cfg(tmp_path)
    old = tmp_path / "exp" / "old" / "decode_t1_implicit"   # an emotion-only decode: its timing names no task
    write_decode_dir(old, [{"utt": "u1", "hyp": "anger", "label": "anger"}], {"n": 1, "sec_per_utt": 0.1})
    cfg.score.baselines = {**cfg.score.baselines, "old": str(tmp_path / "exp" / "old" / "decode_{set}_implicit")}
    cfg.score.task_tables = {"t": {"title": "T", "experiments": ["main", "old"], "columns": ["er"]}}
    with pytest.raises(ValueError, match="experiment 'old' has no rows with a task on test set t1"):
        score_main(cfg)


def test_decodes_without_a_task_score_as_before(tmp_path):
    """An emotion-only system's rows gain neither task nor experiment, and results.json no task tables."""
    exp = tmp_path / "exp" / "sys"
    write_decode_dir(exp / "decode_t1_implicit", [{"utt": u, "hyp": out, "label": gold, "text": text}
                                                   for u, gold, text, out, _ in ER],
                     {"n": 6, "sec_per_utt": 0.1, "set": "t1", "mode": "implicit"})
    score_main(compose([f"data_root={tmp_path / 'data'}", "test_sets=[t1]", f"score.exp_dir={exp}",
                        "score.attributes=false", "decode.modes=[implicit]", "score.baselines={}"]))
    document = json.loads((exp / "results.json").read_text())
    row = document["tables"]["t1"]["implicit"]
    assert "task" not in row and "experiment" not in row and "task_tables" not in document
    assert row["wa"] == pytest.approx(3 / 6) and "WER" not in (exp / "results.md").read_text()


def test_a_baseline_entry_with_modes_is_one_row_per_mode():
    cfg = compose(["exp_root=/e", "system=reasoning"])
    OmegaConf.set_struct(cfg, False)
    cfg.score.baselines = {"alt": {"baseline": "alt4", "modes": ["er", "sqa"]},
                           "single": {"baseline": "label_only", "mode": "er"}, "gone": None}
    assert baseline_entries(cfg) == {"alt_er": ("alt", "/e/reasoning_alt4/decode_{set}_er"),
                                     "alt_sqa": ("alt", "/e/reasoning_alt4/decode_{set}_sqa"),
                                     "single": ("single", "/e/reasoning_label_only/decode_{set}_er")}
    assert list(baseline_rows(cfg)) == ["alt_er", "alt_sqa", "single"] and left_out_baselines(cfg) == {"gone"}
    cfg.baselines = ["label_only"]  # run.sh trained only that one
    assert list(baseline_rows(cfg)) == ["single"] and left_out_baselines(cfg) == {"gone", "alt"}
    cfg.score.baselines = {"both": {"baseline": "x", "mode": "er", "modes": ["sr"]}}
    with pytest.raises(ValueError, match="score.baselines.both"):
        baseline_entries(cfg)


def test_every_column_of_the_vocabulary_is_documented_and_checked():
    import local.eval.task_tables as module
    for name in COLUMNS:
        if not name.endswith(("_er", "_sr")):
            assert f"``{name}``" in module.__doc__, name
    check_task_tables({"t": {"title": "T", "experiments": ["main"], "columns": list(COLUMNS)}}, [], ["grounded"])
