"""Stages 9 and 10: label extraction, batched decoding from shards and data dirs, results tables, the
attribute baseline.  The audio LLM is test_alm's tiny random model; hypothesis files with known answers
are written by hand and their scores compared with local.eval.metrics."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from matplotlib.image import imread

from conftest import make_data_dir
from local.bin.decode import main as decode_main
from local.bin.score import main as score_main
from local.data.attributes import ATTRIBUTES, attribute_stats, bin_attributes
from local.data.kaldi import DataDir, DataDirError, format_kv, parse_dist, read_table
from local.data.labels import EMOTIONS
from local.data.loader import ShardLoader
from local.data.shards import write_shards
from local.eval.attr_baseline import AttributeBaseline
from local.eval.decode import (DataDirBatches, decode, decode_test_set, generation_kwargs, read_decode_dir, resolve_test_set,
                               write_decode_dir)
from local.bin.score import judge_entry
from local.eval.judge import JudgeItem, offline_empathy
from local.eval.report import LEVEL_VOCAB, attribute_words, results_markdown
from local.reasoning.targets import format_problem
from local.eval.extract import extract_label, extract_labels
from local.eval.metrics import INVALID, classification_scores, confusion, distribution_scores
from local.models import alm, feature_norm
from local.models.readout import Readout
from local.reasoning.offline import OfflineTeacher
from local.reasoning.prompts import load_prompt, render
from local.reasoning.teacher import Request, Teacher
from local.train.sft import with_transcript
from local.utils.hydra import compose
from test_alm import PROMPT, build_tiny, tiny_dirs  # noqa: F401  (tiny_dirs: the tiny Whisper / LM fixture)

ROW_KEYS = {"ua", "wa", "f1", "n", "rejected", "subsets", "sec_per_utt", "invalid_rate", "mean_words", "per_class",
            "labels", "quotes"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- label extraction -------------------------------------------------------------------

@pytest.mark.parametrize("text, label", [
    # the conclusion wins over labels named while describing the evidence
    ('The speaker spoke at a slow pace, with a low tone and quiet level: "I am so happy today". '
     "Based on the analysis of speech characteristics, the emotion was inferred to be sadness.", "sadness"),
    ("The words sound happy, but the voice is flat, so the emotion is neutral.", "neutral"),
    ("Emotion: fear. The speaker also sounds a little surprised.", "fear"),
    # without a cue, the last label named
    ("Sounds happy at first, then clearly angry.", "anger"),
    ("HAPPINESS", "happiness"),
    # negation does not name a label
    ("The speaker is not angry.", None),
    ("She doesn't sound sad at all; she is happy.", "happiness"),
    ("The emotion is anger rather than disgust.", "anger"),
    ("There is no fear in this voice, the emotion is surprise", "surprise"),
    # Chinese forms and negation
    ("说话人语速很快，音调很高，情感是愤怒。", "anger"),
    ("他听起来很开心", "happiness"),
    ("他不开心", None),
    # invalid: no label, or a word that only contains one
    ("The speaker talks about the weather.", None),
    ("an unhappy sound", None),
    ("", None),
])
def test_rule_extraction(text, label):
    assert extract_label(text) == label


def test_rules_read_the_gold_label_of_c2ser_targets_whatever_the_transcript_says():
    requests = [Request(key=f"u{i} {t}", type=t, utt=f"u{i}", label=label, text="I am so happy today",
                        attrs={"pitch": "High", "rate": "Low", "loudness": "Medium"})
                for i, label in enumerate(EMOTIONS) for t in ("c2ser_explicit", "c2ser_implicit")]
    answers = OfflineTeacher().generate(requests)
    assert [extract_label(a) for a in answers] == [r.label for r in requests]


class ScriptedTeacher(Teacher):
    """Answers the extraction prompt from a script keyed by the output it quotes; records what it was asked."""

    name = "scripted"

    def __init__(self, script):
        self.script, self.asked = script, []

    def generate(self, requests):
        self.asked += [r.prompt for r in requests]
        return [next((a for text, a in self.script.items() if text in r.prompt), None) for r in requests]


def test_llm_extraction_reads_the_teachers_answer_with_the_rules():
    outputs = ["He is fuming about the delay.", "A calm report of facts.", "He is fuming about the delay.",
               "Mumbling.", ""]
    teacher = ScriptedTeacher({"fuming": "Anger.", "calm report": "The label is neutral", "Mumbling": None})
    labels = extract_labels(outputs, "llm", teacher)
    assert labels == ["anger", "neutral", "anger", None, None]
    # the paper's prompt, once per distinct non-empty output
    assert teacher.asked == [render("label_extraction", text=t, labels=", ".join(EMOTIONS)) for t in outputs[:2] + outputs[3:4]]
    assert load_prompt("label_extraction").startswith("Given the following text")
    with pytest.raises(ValueError, match="method"):
        extract_labels(outputs, "regex")


# --- decoding -----------------------------------------------------------------------------

@pytest.fixture
def test_dirs(tmp_path):
    """data/test (6 labelled utterances with subsets) and its shards in dump/test/shards (3 tars)."""
    data = tmp_path / "data" / "test"
    shutil.move(make_data_dir(tmp_path / "corpus"), data)
    tables = DataDir.load(data)
    tables["utt2subset"] = {u: ("conflict" if i % 2 else "consistent") for i, u in enumerate(tables.utts)}
    tables.save(data)
    write_shards(data, tmp_path / "dump" / "test" / "shards", max_shard_size=2)
    return tmp_path


def test_decode_batched_equals_one_at_a_time_and_data_dir_equals_shards(tiny_dirs, test_dirs):
    model = build_tiny(tiny_dirs).eval()
    shards = resolve_test_set("test", test_dirs / "data", test_dirs / "dump")
    assert shards.shard_dir == test_dirs / "dump" / "test" / "shards"
    gen = generation_kwargs(6)
    assert gen == {"max_new_tokens": 6, "do_sample": False}

    def shard_loader(batch_size):
        return ShardLoader(shards.shard_dir, batch_size=batch_size, shuffle=False, rank=0, world_size=1)

    batched, timing = decode(model, shard_loader(4), PROMPT, gen)
    single, _ = decode(model, shard_loader(1), PROMPT, gen)
    from_dir, _ = decode(model, DataDirBatches(test_dirs / "data" / "test", batch_size=4), PROMPT, gen)

    data = DataDir.load(test_dirs / "data" / "test")
    assert [r["utt"] for r in batched] == data.utts  # every utterance once, sorted
    assert batched == single == from_dir
    assert any(r["hyp"] for r in batched)
    for r in batched:
        assert (r["label"], r["text"], r["subset"], r["lang"]) == (
            data["utt2emo"][r["utt"]], data["text"][r["utt"]], data["utt2subset"][r["utt"]], "en")
        assert r["n_tokens"] == len(model.tokenizer(r["hyp"], add_special_tokens=False).input_ids)
    assert timing["n"] == 6 and timing["seconds"] > 0
    assert timing["sec_per_utt"] == pytest.approx(timing["seconds"] / 6)
    assert timing["tokens_per_utt"] == pytest.approx(np.mean([r["n_tokens"] for r in batched]))

    sampling = generation_kwargs(6, sample=True)
    assert sampling == {"max_new_tokens": 6, "do_sample": True, "temperature": 0.7, "top_p": 0.9}
    draws = []
    for _ in range(2):
        torch.manual_seed(0)
        draws.append(decode(model, shard_loader(4), PROMPT, sampling)[0])
    assert draws[0] == draws[1] and [r["utt"] for r in draws[0]] == data.utts

    one = next(iter(shard_loader(2)))
    cascade, _ = decode(model, [one], PROMPT, gen, transcript_in_prompt=True)  # the text-only cascade's prompt
    want = model.generate(one["wav"], one["wav_lens"], [with_transcript(PROMPT, m["text"]) for m in one["meta"]], **gen)
    assert {r["utt"]: r["hyp"] for r in cascade} == dict(zip(one["utts"], want))
    with pytest.raises(RuntimeError, match="decoded twice"):
        decode(model, [one, one], PROMPT, gen)


def test_decoding_normalises_by_the_test_sets_own_speakers(tiny_dirs, test_dirs, monkeypatch):
    monkeypatch.setattr(feature_norm, "MIN_SPEAKER_UTTS", 3)
    model = build_tiny(tiny_dirs, "feature_norm=speaker").eval()
    data = DataDir.load(test_dirs / "data" / "test")
    model.fit_feature_norm([next(iter(DataDirBatches(test_dirs / "data" / "test", batch_size=2)))])
    model.feature_norm.speakers = {"spk0": "stale"}
    gen = generation_kwargs(4)
    tables = []
    for entry in ("test", str(test_dirs / "data" / "test")):  # shards, then the data dir itself
        test_set = resolve_test_set(entry, test_dirs / "data", test_dirs / "dump")
        records, _ = decode_test_set(model, test_set, PROMPT, gen, batch_size=4)
        assert sorted(model.feature_norm.speakers) == sorted(set(data["utt2spk"].values()))
        tables.append(model.feature_norm.speakers)
        per_speaker = {}
        for batch in DataDirBatches(test_dirs / "data" / "test", batch_size=1):
            spk = batch["meta"][0]["spk"]
            hyp = model.generate(batch["wav"], batch["wav_lens"], [PROMPT], speakers=[spk], **gen)[0]
            per_speaker[batch["utts"][0]] = hyp
        assert {r["utt"]: r["hyp"] for r in records} == per_speaker
    for spk, stats in tables[0].items():
        for name, (mean, std) in stats.items():
            torch.testing.assert_close((mean, std), tables[1][spk][name], atol=1e-5, rtol=1e-5)

    # the row without the test set's own statistics: every test speaker gets the training set's global ones
    records, _ = decode_test_set(model, resolve_test_set("test", test_dirs / "data", test_dirs / "dump"), PROMPT,
                                 gen, batch_size=4, speaker_stats=False)
    assert model.feature_norm.speakers == {}
    batch = next(iter(DataDirBatches(test_dirs / "data" / "test", batch_size=len(data))))
    global_only = model.generate(batch["wav"], batch["wav_lens"], [PROMPT] * len(data), speakers=[None] * len(data),
                                 **gen)
    assert {r["utt"]: r["hyp"] for r in records} == dict(zip(batch["utts"], global_only))


def as_trained(model, cfg):
    """The model with the facts stage 6 would have saved with it (training.yaml): its instructions, read-out."""
    from local.data.labels import recipe_labels
    from local.train.sft import training_facts

    model.facts = training_facts(model, cfg.sft, (cfg.sft.explicit, cfg.sft.implicit), recipe_labels(cfg.corpus))
    return model


def test_decode_and_score_entry_points(tiny_dirs, test_dirs, monkeypatch, capsys):
    # a user's own data dir: wav.scp only, one entry unreadable
    user = test_dirs / "mine"
    user.mkdir()
    wavs = read_table(test_dirs / "data" / "test" / "wav.scp")
    (user / "wav.scp").write_text("".join(f"x{i} {p}\n" for i, p in enumerate(list(wavs.values())[:3]))
                                  + "x9 /no/such/file.wav\n")
    cfg = compose([f"data_root={test_dirs / 'data'}",
                   f"dump_root={test_dirs / 'dump'}", f"exp_root={test_dirs / 'exp'}",
                   f"test_sets=[test,{user}]", "decode.batch_size=4", "decode.device=cpu",
                   "decode.max_new_tokens.c2ser_explicit=6", "decode.max_new_tokens.c2ser_implicit=3"])
    model = as_trained(build_tiny(tiny_dirs).eval(), cfg)
    asked = []
    monkeypatch.setattr(alm, "load_alm", lambda path, device: asked.append((path, device)) or model)
    decode_main(cfg)
    exp = test_dirs / "exp" / "c2ser"
    assert asked == [(exp / "distill" / "model", "cpu")]
    # a set of the recipe is decoded from the model's frozen-encoder cache (written on the way), a user's dir from audio
    cache = next((test_dirs / "dump" / "test").glob("feats_*"))
    assert (cache / "manifest.json").is_file()
    for name, n, source in (("test", 6, str(cache)), ("mine", 3, "data")):
        for mode in ("explicit", "implicit"):
            records, timing = read_decode_dir(exp / f"decode_{name}_{mode}")
            assert [r["utt"] for r in records] == sorted(r["utt"] for r in records) and len(records) == n
            assert {"n", "seconds", "sec_per_utt", "tokens_per_utt"} <= set(timing)
            assert (timing["set"], timing["mode"], timing["n"], timing["source"]) == (name, mode, n, source)
            assert timing["rejected"] == (1 if name == "mine" else 0)
            assert timing["gen_kwargs"]["max_new_tokens"] == (6 if mode == "explicit" else 3)
            assert all(r["label"] is None for r in records) == (name == "mine")

    markdown = score_main(cfg)
    results = json.loads((exp / "results.json").read_text())["tables"]
    assert list(results) == ["test", "mine"]
    assert set(results["test"]) == {"explicit", "implicit"}  # no utt2attr: no attribute row
    assert results["test"]["implicit"]["n"] == 6 and set(results["test"]["implicit"]["subsets"]) == {
        "conflict", "consistent"}
    mine = results["mine"]["implicit"]
    assert (mine["ua"], mine["n"], mine["subsets"]) == (None, 0, {})  # no labels: output statistics only
    assert mine["invalid_rate"] is not None and mine["mean_words"] is not None
    assert markdown in capsys.readouterr().out
    assert (exp / "confusion_test_implicit.png").read_bytes().startswith(PNG_SIGNATURE)
    assert not (exp / "confusion_mine_implicit.png").exists()


def test_decode_writes_hyp_dist_and_score_reports_its_distribution_metrics(tiny_dirs, test_dirs, monkeypatch):
    data = test_dirs / "data" / "test"
    tables = DataDir.load(data)
    soft = ["anger:0.6000 sadness:0.4000", "neutral:0.5000 sadness:0.5000", "fear:1.0000"]
    tables["utt2dist"] = {u: soft[i % 3] for i, u in enumerate(tables.utts)}
    tables.save(data)
    cfg = compose([f"data_root={test_dirs / 'data'}", f"dump_root={test_dirs / 'dump'}",
                   f"exp_root={test_dirs / 'exp'}", "test_sets=[test]", "decode.batch_size=4", "decode.device=cpu",
                   "decode.modes=[explicit]", "decode.max_new_tokens.c2ser_explicit=6", "decode.dist=true",
                   "score.attributes=false"])
    model = as_trained(build_tiny(tiny_dirs).eval(), cfg)
    monkeypatch.setattr(alm, "load_alm", lambda path, device: model)
    decode_main(cfg)
    decode_dir = test_dirs / "exp" / "c2ser" / "decode_test_explicit"
    records, timing = read_decode_dir(decode_dir)
    assert timing["readout"] == {"answer_prefix": "\nDistribution:", "separator": " ", "labels": list(EMOTIONS)}
    assert timing["readout_seconds"] > 0
    table = read_table(decode_dir / "hyp_dist")
    lines = [json.loads(line) for line in (decode_dir / "hyps.jsonl").read_text().splitlines()]
    assert list(table) == tables.utts == [r["utt"] for r in lines]
    for r in lines:  # what a reader needs in each record: the gold label, the rules' label or why none, the read-out
        assert {"label", "pred", "dist"} <= set(r) and (r["pred"] is not None or r["pred_why"])
        assert r["pred"] == extract_label(r["hyp"]) and list(r["dist"]) == list(EMOTIONS)
        assert r["dist"] == pytest.approx(parse_dist(table[r["utt"]]), abs=1e-6)
    # hyp_dist is the read-out after each hypothesis (here recomputed from the audio, not the feature cache)
    readout = Readout(model.tokenizer)
    instruction = load_prompt("c2ser_explicit_instruction")
    loader = ShardLoader(test_dirs / "dump" / "test" / "shards", batch_size=6, shuffle=False, rank=0, world_size=1)
    batch = next(iter(loader))
    hyps = {r["utt"]: r["hyp"] for r in records}
    want = readout.distributions(model, batch, [instruction] * 6, [hyps[u] for u in batch["utts"]])
    for utt, dist in zip(batch["utts"], want):
        got = parse_dist(table[utt])
        assert list(got) == list(EMOTIONS) and sum(got.values()) == pytest.approx(1, abs=1e-5)
        assert [r["dist"] for r in records if r["utt"] == utt] == [got]
        np.testing.assert_allclose(list(got.values()), list(dist.values()), atol=1e-4)

    score_main(cfg)
    exp = test_dirs / "exp" / "c2ser"
    row = json.loads((exp / "results.json").read_text())["tables"]["test"]["explicit"]
    gold = [parse_dist(tables["utt2dist"][u]) for u in tables.utts]
    scores = distribution_scores([parse_dist(table[u]) for u in tables.utts], gold, EMOTIONS)
    assert {k: row[k] for k in ("js", "bc", "brier", "ece", "acc_dist", "n_dist")} == {
        "js": scores["js"], "bc": scores["bc"], "brier": scores["brier"], "ece": scores["ece"],
        "acc_dist": scores["acc"], "n_dist": 6}
    formatted = {"well_formed", "n_formatted"} if "target" in timing else set()  # timing names the prompt's target
    assert set(row) == ROW_KEYS | {"js", "bc", "brier", "ece", "acc_dist", "n_dist"} | formatted
    md = (exp / "results.md").read_text()
    assert "| sec/utt | n | rejected | well-formed % | JS (bits) | BC | Brier | ECE | acc dist % |" in md
    assert (f"| 6 | 0 | {100 * row['well_formed']:.2f} | {row['js']:.4f} | {row['bc']:.4f} | {row['brier']:.4f} | {row['ece']:.4f} | "
            f"{100 * row['acc_dist']:.2f} |") in md


def test_hyp_dist_round_trip_and_errors(tmp_path):
    records = [{"utt": u, "hyp": "x", "dist": {"anger": 0.25, "fear": 0.75}} for u in ("b", "a")]
    write_decode_dir(tmp_path, records, {"n": 2})
    assert (tmp_path / "hyp_dist").read_text() == "a anger:0.250000 fear:0.750000\nb anger:0.250000 fear:0.750000\n"
    got, _ = read_decode_dir(tmp_path)
    assert got == sorted(records, key=lambda r: r["utt"])
    with pytest.raises(ValueError, match="no read-out distribution, e.g. b"):
        write_decode_dir(tmp_path, [records[1], {"utt": "b", "hyp": "x"}], {"n": 2})
    (tmp_path / "hyp_dist").write_text("a anger:1.0\n")
    with pytest.raises(DataDirError, match="hyp_dist.*no entry for 'b'"):
        read_decode_dir(tmp_path)
    write_decode_dir(tmp_path, [{"utt": "a", "hyp": "x"}], {"n": 1})  # decoded again without the read-out
    assert not (tmp_path / "hyp_dist").exists() and "dist" not in read_decode_dir(tmp_path)[0][0]


# --- scoring -------------------------------------------------------------------------------

HAND = [  # utt, reference, subset, output
    ("s1-a", "anger", "conflict", "The emotion was inferred to be anger."),
    ("s1-b", "sadness", "conflict", "Slow and low. The emotion is happiness."),
    ("s1-c", "happiness", "consistent", "The emotion was inferred to be happiness."),
    ("s2-a", "anger", "consistent", "I cannot tell."),
    ("s2-b", "sadness", "consistent", "情感是悲伤。"),
    ("s2-c", "happiness", "conflict", "The speaker is not happy; the emotion is sadness."),
]
HAND_PREDS = ["anger", "happiness", "happiness", None, "sadness", "sadness"]


def write_hand_decode(decode_dir: Path, outputs, sec_per_utt: float, set_name="t1", mode="implicit", dists=None,
                      **timing):
    records = [{"utt": u, "hyp": h, "label": ref, "subset": sub, "lang": "en", "text": "x", "n_tokens": 5}
               for (u, ref, sub, _), h in zip(HAND, outputs)]
    for r, dist in zip(records, dists or []):
        r["dist"] = dist
    write_decode_dir(decode_dir, records, {"n": 6, "seconds": 6 * sec_per_utt, "sec_per_utt": sec_per_utt,
                                           "tokens_per_utt": 5.0, "set": set_name, "mode": mode, **timing})


def test_results_have_the_documented_shape_and_the_metrics_values(tmp_path, capsys):
    exp = tmp_path / "exp" / "sys"
    outputs = [h for *_, h in HAND]
    write_hand_decode(exp / "decode_t1_implicit", outputs, 0.01)
    write_hand_decode(exp / "decode_t1_explicit", ["The emotion is anger."] * 6, 0.2, mode="explicit")
    write_hand_decode(tmp_path / "exp" / "text" / "decode_t1_implicit", ["It is neutral."] * 6, 0.005)
    cfg = compose([f"data_root={tmp_path / 'data'}", "test_sets=[t1]",
                   f"score.exp_dir={exp}", "score.attributes=false"])
    cfg.score.baselines = {"text_only": str(tmp_path / "exp" / "text" / "decode_{set}_implicit")}
    score_main(cfg)

    results = json.loads((exp / "results.json").read_text())["tables"]
    assert list(results) == ["t1"] and list(results["t1"]) == ["explicit", "implicit", "text_only"]
    row = results["t1"]["implicit"]
    assert set(row) == ROW_KEYS
    refs = [ref for _, ref, _, _ in HAND]
    hyps = [INVALID if p is None else p for p in HAND_PREDS]
    assert [extract_label(h) for h in outputs] == HAND_PREDS
    want = classification_scores(refs, hyps, EMOTIONS)
    assert {k: row[k] for k in ("ua", "wa", "f1", "n", "per_class")} == {
        k: want[k] for k in ("ua", "wa", "f1", "n", "per_class")}
    assert row["wa"] == pytest.approx(3 / 6) and row["invalid_rate"] == pytest.approx(1 / 6)
    assert set(row["subsets"]) == {"conflict", "consistent"}
    for name, sub in row["subsets"].items():
        idx = [i for i, (_, _, s, _) in enumerate(HAND) if s == name]
        sub_want = classification_scores([refs[i] for i in idx], [hyps[i] for i in idx], EMOTIONS)
        assert sub == {k: sub_want[k] for k in ("ua", "wa", "f1", "n")}
    assert row["sec_per_utt"] == 0.01
    assert row["mean_words"] == pytest.approx((7 + 7 + 7 + 3 + 6 + 9) / 6)  # 情感是悲伤。 = 5 + 1
    assert results["t1"]["text_only"]["wa"] == 0 and results["t1"]["explicit"]["wa"] == pytest.approx(2 / 6)

    md = (exp / "results.md").read_text()
    assert md in capsys.readouterr().out
    assert "| system | UA | WA | F1 | UA conflict | UA consistent | invalid % | words | sec/utt | n | rejected |" in md
    assert (f"| implicit | {100 * row['ua']:.2f} | 50.00 | {100 * row['f1']:.2f} | "
            f"{100 * row['subsets']['conflict']['ua']:.2f} | {100 * row['subsets']['consistent']['ua']:.2f} | "
            f"16.67 | {row['mean_words']:.1f} | 0.01 | 6 | 0 |") in md
    assert "Columns: UA = unweighted average recall, WA = accuracy, F1 = macro-F1" in md
    assert "well-formed" not in md and "JS" not in md and "no distribution scores" not in md

    png = exp / "confusion_t1_implicit.png"
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    image = imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert confusion(refs, hyps, EMOTIONS)[0].tolist() == [1, 0, 0, 0, 0, 0, 0, 1]  # anger: one right, one invalid


def test_judge_rubrics_add_the_mean_judge_score_of_each_row(tmp_path):
    exp = tmp_path / "exp" / "sys"
    outputs = ["I can hear how angry you are about the soup; that was not okay.",
               "<thought>Emotion perception: sadness.</thought><response>That sounds heavy. I am here.</response>",
               "Thank you for sharing.", "I cannot tell.", "情感是悲伤。", "You sound sad; tell me more."]
    write_hand_decode(exp / "decode_t1_implicit", outputs, 0.01)
    cfg = compose([f"data_root={tmp_path / 'data'}", "test_sets=[t1]", f"score.exp_dir={exp}",
                   "score.attributes=false", "score.judge_rubrics=[empathy]", "judge=offline",
                   "decode.modes=[implicit]"])
    score_main(cfg)
    row = json.loads((exp / "results.json").read_text())["tables"]["t1"]["implicit"]
    want = [offline_empathy(JudgeItem(utt=u, output=h, label=ref, text="x"))["empathy"]
            for (u, ref, _, _), h in zip(HAND, outputs)]
    assert len(set(want)) > 1  # the outputs differ in empathy, so the mean says something
    assert row["judge"] == {"backend": "offline", "empathy": pytest.approx(np.mean(want)), "n_judged": 6}
    assert row["not_judged"] == 0
    md = (exp / "results.md").read_text()
    assert "| n | rejected | empathy[offline] | not judged |" in md
    assert f"| {np.mean(want):.2f} | 0 |" in md
    assert "[offline] a rule stand-in, not a model judge" in md


# --- what stage 10 checks and counts ------------------------------------------------------------

def write_set(path: Path, rejected=None, **tables):
    """A test set's data dir with the HAND utterances (and ``rejected``, as stage 1 writes it)."""
    base = {"utt2spk": {u: u.split("-")[0] for u, *_ in HAND}, "utt2emo": {u: ref for u, ref, *_ in HAND}}
    DataDir({**base, **tables}, dict(rejected or {})).save(path)


def test_well_formed_rate_of_each_target_format_and_the_utterances_lost(tmp_path):
    exp = tmp_path / "exp" / "sys"
    write_set(tmp_path / "data" / "t1", rejected={"s3-x": "empty audio (0 samples)", "s3-y": "longer than 20 s"})
    implicit = [h for *_, h in HAND]
    eips = ["<thought>Emotion perception: anger. Intent: respect. Psychological modelling: defensive. "
            "Strategy: validate.</thought><response>That was unfair.</response>",
            "<thought>Emotion perception: sadness.</thought><response>I am here.</response>",  # steps missing
            "I hear you.", "<thought>Emotion perception: joy. Intent: share. Psychological modelling: open. "
            "Strategy: celebrate.</thought><response></response>", "", "<response>ok</response>"]
    write_hand_decode(exp / "decode_t1_implicit", implicit, 0.01, target="c2ser_implicit", rejected=1)
    write_hand_decode(exp / "decode_t1_cot", eips, 0.01, mode="cot", target="eips", rejected=1)
    write_hand_decode(exp / "decode_t1_plain", implicit, 0.01, mode="plain")  # an older decode: no target
    cfg = compose([f"data_root={tmp_path / 'data'}", "test_sets=[t1]", f"score.exp_dir={exp}",
                   "score.attributes=false", "decode.modes=[implicit,cot,plain]"])
    score_main(cfg)
    rows = json.loads((exp / "results.json").read_text())["tables"]["t1"]
    for name, target, outputs in (("implicit", "c2ser_implicit", implicit), ("cot", "eips", eips)):
        want = [format_problem(target, h, "x") is None for h in outputs]
        assert rows[name]["well_formed"] == pytest.approx(np.mean(want)) and rows[name]["n_formatted"] == 6
        assert rows[name]["rejected"] == 2 + 1  # the data dir's rejected, then decoding's
    assert rows["implicit"]["well_formed"] == pytest.approx(5 / 6)  # "I cannot tell." names no label
    assert rows["cot"]["well_formed"] == pytest.approx(1 / 6)
    assert "well_formed" not in rows["plain"] and rows["plain"]["rejected"] == 2
    md = (exp / "results.md").read_text()
    assert "| n | rejected | well-formed % |" in md
    assert "| 6 | 3 | 83.33 |" in md and "| 6 | 2 | – |" in md
    assert "well-formed % = outputs in the format of the target the prompt was trained on" in md


@pytest.mark.parametrize("rate", ["Low", "Medium", "High"])
def test_attribute_words_of_every_teacher_phrasing_are_read_back(rate):
    requests = [Request(key=f"u{i}", type="c2ser_explicit", utt=f"u{i}-{pitch}{energy}", label="anger",
                        text="I am here", attrs={"rate": rate, "pitch": pitch, "loudness": energy})
                for i in range(8) for pitch in ("Low", "Medium", "High") for energy in ("Low", "Medium", "High")]
    answers = OfflineTeacher().generate(requests)
    assert len(set(a.split(":")[0] for a in answers)) > 6  # the templates and level words vary
    for request, answer in zip(requests, answers):
        want = {k: v.lower() for k, v in request.attrs.items()}
        assert attribute_words(answer) == want, answer
    assert attribute_words("Volume is medium, speed is high and pitch is low.") == {
        "loudness": "medium", "rate": "high", "pitch": "low"}  # the ambiguity targets' Step 2
    assert attribute_words("a speaking rate of fast, a volume level of quiet, and a pitch of deep") == {
        "rate": "high", "loudness": "low", "pitch": "low"}  # the C²SER teacher prompt's phrasing
    assert attribute_words("She spoke quickly in a brisk tempo, with a low energy level and a raised tone.") == {
        "rate": "high", "loudness": "low", "pitch": "high"}
    assert attribute_words("a high level of anger; the tone is sad") == {}
    for attr, levels in LEVEL_VOCAB.items():  # a word means one level of an attribute
        words = [w for ws in levels.values() for w in ws]
        assert len(words) == len(set(words)), attr


def test_explicit_cot_attribute_words_are_scored_against_utt2attr(tmp_path):
    gold = {"s1-a": "High High High", "s1-b": "Low Low Low", "s1-c": "unknown Medium Medium",
            "s2-a": "Medium Medium Medium", "s2-b": "High Low Low", "s2-c": "Low High High"}  # pitch loudness rate
    said = {"s1-a": "High High High", "s1-b": "High Low Low", "s1-c": "High Medium Low", "s2-b": "High Low Low"}
    attr_line = lambda levels: format_kv(dict(zip(("pitch", "loudness", "rate"), levels.split())))  # noqa: E731
    write_set(tmp_path / "data" / "t1", utt2attr={u: attr_line(v) for u, v in gold.items()})
    teacher = OfflineTeacher()
    outputs = []
    for utt, ref, _, _ in HAND:
        if utt in said:
            attrs = dict(zip(("pitch", "loudness", "rate"), said[utt].split()))
            outputs.append(teacher.generate([Request(key=utt, type="c2ser_explicit", utt=utt, label=ref,
                                                     text="We meet again", attrs=attrs)])[0])
        elif utt == "s2-c":
            outputs.append("The speaker spoke at a fast pace with a low-pitched tone. The emotion is sadness.")
        else:
            outputs.append("I cannot tell.")
    exp = tmp_path / "exp" / "sys"
    write_hand_decode(exp / "decode_t1_explicit", outputs, 0.02, mode="explicit", target="c2ser_explicit")
    write_hand_decode(exp / "decode_t1_implicit", ["The emotion is anger."] * 6, 0.01, target="c2ser_implicit")
    cfg = compose([f"data_root={tmp_path / 'data'}", "test_sets=[t1]", f"score.exp_dir={exp}",
                   "score.attributes=false"])
    score_main(cfg)
    rows = json.loads((exp / "results.json").read_text())["tables"]["t1"]
    # stated all three: s1-a, s1-b, s1-c, s2-b; pitch of s1-c is unknown, so 3 scored
    assert rows["explicit"]["attr_words"] == {"pitch": pytest.approx(2 / 3), "loudness": 1.0,
                                              "rate": pytest.approx(3 / 4), "n": 4, "n_total": 6}
    assert "attr_words" not in rows["implicit"]
    assert rows["explicit"]["well_formed"] == pytest.approx(4 / 6)  # "I cannot tell.", and s2-c says no volume
    md = (exp / "results.md").read_text()
    assert "| well-formed % | quotes % | quotes spoken % | pitch word % | loudness word % | rate word % | attr n |" in md
    # the four CoTs quote "We meet again", and the records' transcript is "x": quoted, but not what was spoken
    assert "| 66.67 | 66.67 | 0.00 | 66.67 | 100.00 | 75.00 | 4/6 |" in md
    assert "| 100.00 | 0.00 | – | – | – | – | – |" in md  # the implicit row


def test_rows_without_distribution_scores_say_why_when_the_table_has_some(tmp_path):
    exp = tmp_path / "exp" / "sys"
    soft = {u: f"{ref}:0.7500 neutral:0.2500" for u, ref, *_ in HAND}
    write_set(tmp_path / "data" / "t1", utt2dist=soft)
    write_set(tmp_path / "data" / "t2")                                            # no utt2dist
    write_set(tmp_path / "data" / "t3", utt2dist={f"x{u}": v for u, v in soft.items()})  # other utterances
    write_set(tmp_path / "data" / "t4", utt2dist=soft)                             # nobody asked
    dists = [{"anger": 0.5, "neutral": 0.5}] * 6
    outputs = [h for *_, h in HAND]
    for name in ("t1", "t2", "t3"):
        write_hand_decode(exp / f"decode_{name}_sft", outputs, 0.01, set_name=name, mode="sft", dists=dists)
        write_hand_decode(exp / f"decode_{name}_implicit", outputs, 0.01, set_name=name)
    write_hand_decode(exp / "decode_t4_implicit", outputs, 0.01, set_name="t4")
    write_hand_decode(exp / "decode_t4_sft", outputs, 0.01, set_name="t4", mode="sft")  # no hyp_dist either
    cfg = compose([f"data_root={tmp_path / 'data'}", "test_sets=[t1,t2,t3,t4]", f"score.exp_dir={exp}",
                   "score.attributes=false", "decode.modes=[implicit,sft]"])
    score_main(cfg)
    results = json.loads((exp / "results.json").read_text())["tables"]
    assert "js" in results["t1"]["sft"] and "dist_note" not in results["t1"]["sft"]
    hyp_dist_note = "no hyp_dist (decode.dist=true writes the read-out distributions)"
    assert results["t1"]["implicit"]["dist_note"] == hyp_dist_note
    assert results["t2"]["sft"]["dist_note"] == "the test set has no utt2dist"
    assert results["t3"]["sft"]["dist_note"] == "none of its 6 utterances is in the test set's utt2dist"
    assert "dist_note" not in results["t4"]["implicit"]
    md = (exp / "results.md").read_text()
    tables = {t.split("\n")[0]: t for t in md.split("### ")[1:]}
    assert f"- implicit: no distribution scores: {hyp_dist_note}." in tables["t1"]
    assert "JS (bits)" in tables["t1"] and "JS (bits) / BC / Brier / ECE" in tables["t1"]
    assert "- sft: no distribution scores: the test set has no utt2dist." in tables["t2"]
    assert "no distribution scores" not in tables["t4"] and "JS" not in tables["t4"]


def test_a_baseline_not_yet_decoded_fails_the_stage_naming_it(tmp_path):
    exp = tmp_path / "exp" / "sys"
    write_hand_decode(exp / "decode_t1_implicit", [h for *_, h in HAND], 0.01)
    cfg = compose([f"data_root={tmp_path / 'data'}", "test_sets=[t1]", f"score.exp_dir={exp}",
                   "score.attributes=false", "decode.modes=[implicit]"])
    missing = tmp_path / "exp" / "sys_no_cot" / "decode_t1_implicit"
    cfg.score.baselines = {"no_cot": str(tmp_path / "exp" / "sys_no_cot" / "decode_{set}_implicit")}
    with pytest.raises(FileNotFoundError, match=rf"baseline 'no_cot'.*{missing} has no hyps.jsonl.*stage 9"):
        score_main(cfg)
    assert not (exp / "results.json").exists()
    cfg.score.baselines = {"no_cot": None}  # left out on purpose
    score_main(cfg)
    assert list(json.loads((exp / "results.json").read_text())["tables"]["t1"]) == ["implicit"]


def test_outputs_the_judge_could_not_score_are_counted():
    class Flaky:
        name = "stub"

        def score(self, items, rubric):
            return [None if i % 3 == 0 and rubric == "empathy" else {rubric: 1.0 + i} for i in range(len(items))]

    records = [{"utt": f"u{i}", "hyp": "That sounds hard.", "label": "sadness"} for i in range(6)]
    entry = judge_entry(Flaky(), ["empathy", "emotion"], records)
    assert entry == {"judge": {"backend": "stub", "empathy": pytest.approx(np.mean([2, 3, 5, 6])),
                               "emotion": pytest.approx(3.5), "n_judged": 4}, "not_judged": 2}
    row = {"ua": None, "wa": None, "f1": None, "n": 0, "rejected": 0, "subsets": {}, "sec_per_utt": None,
           "invalid_rate": None, "mean_words": None, **entry}
    md = results_markdown({"t": {"eips": row}})
    assert "| emotion[stub] | empathy[stub] | not judged |" in md and md.rstrip().count("| 2 |") == 1
    assert "stand-in" not in md


# --- the attribute baseline -------------------------------------------------------------------

CLASSES = ("anger", "sadness", "happiness", "neutral")
# per class: mean f0 (Hz), f0 range (semitones), loudness (LUFS), phones per second
MEANS = {"anger": (260, 12, -14, 15), "sadness": (140, 4, -30, 8), "happiness": (240, 14, -20, 13),
         "neutral": (170, 6, -24, 11)}


def write_attr_set(path: Path, n_per_class: int, seed: int, stats=None) -> dict:
    rng = np.random.default_rng(seed)
    raw, labels = {}, {}
    for label in CLASSES:
        for i in range(n_per_class):
            utt = f"{label}-{seed}-{i:03d}"
            values = np.array(MEANS[label]) * (1 + 0.08 * rng.standard_normal(4))
            raw[utt] = dict(zip(ATTRIBUTES.values(), map(float, values)))
            labels[utt] = label
    first = sorted(raw)[0]
    raw[first]["lufs"] = -np.inf  # a silent clip, below the loudness gate
    stats = stats or attribute_stats(raw.values())
    tables = {"utt2spk": {u: u.split("-")[0] for u in raw}, "utt2emo": labels,
              "utt2attr": {u: format_kv(bin_attributes(v, stats)) for u, v in raw.items()},
              "utt2subset": {u: ("conflict" if i % 2 else "consistent") for i, u in enumerate(sorted(raw))}}
    DataDir(tables).save(path)
    return stats


@pytest.mark.parametrize("features", ["levels", "values", "both"])
def test_attribute_baseline_beats_chance(tmp_path, features):
    stats = write_attr_set(tmp_path / "train", 30, seed=0)
    write_attr_set(tmp_path / "test", 10, seed=1, stats=stats)
    records, timing = AttributeBaseline(features).fit(tmp_path / "train").predict(tmp_path / "test")
    assert len(records) == timing["n"] == 40 and all(r["hyp"] in CLASSES for r in records)
    ua = classification_scores([r["label"] for r in records], [r["hyp"] for r in records], EMOTIONS)["ua"]
    assert ua > 0.7  # chance: 0.25


def test_attribute_row_in_the_results(tmp_path):
    stats = write_attr_set(tmp_path / "data" / "train", 30, seed=0)
    write_attr_set(tmp_path / "data" / "test", 10, seed=1, stats=stats)
    exp = tmp_path / "exp" / "c2ser"
    cfg = compose([f"data_root={tmp_path / 'data'}", f"exp_root={tmp_path / 'exp'}",
                   "test_sets=[test]", "decode.modes=[]"])
    score_main(cfg)
    row = json.loads((exp / "results.json").read_text())["tables"]["test"]["attributes"]
    records, timing = read_decode_dir(exp / "attr_baseline" / "test")
    scores = classification_scores([r["label"] for r in records], [r["hyp"] for r in records], EMOTIONS)
    assert set(row) == ROW_KEYS and row["n"] == 40 and row["ua"] == scores["ua"] > 0.7
    assert row["invalid_rate"] == 0 and row["mean_words"] == 1 and row["sec_per_utt"] == timing["sec_per_utt"]
    assert set(row["subsets"]) == {"conflict", "consistent"}
    assert (exp / "confusion_test_attributes.png").read_bytes().startswith(PNG_SIGNATURE)


def test_tables_say_when_the_training_targets_came_from_the_stand_in_teacher():
    row = {"ua": 0.5, "wa": 0.5, "f1": 0.5, "n": 2, "subsets": {}, "sec_per_utt": None, "invalid_rate": 0.0,
           "mean_words": 3.0, "per_class": {}, "rejected": 0}
    tables = {"t1": {"implicit": row}}
    offline = results_markdown(tables, {"tables": {"t1": {"teacher": {"backend": "offline", "seed": 0}}}})
    assert "targets of the offline teacher" in offline and "stand-in" in offline
    llm = results_markdown(tables, {"tables": {"t1": {"teacher": {"backend": "openai", "model": "gpt-4o"}}}})
    assert "targets of the openai teacher gpt-4o." in llm and "stand-in" not in llm
    assert "teacher" not in results_markdown(tables)


def test_the_rows_of_baselines_follow_what_run_sh_trained():
    """run.sh --baselines "no_cot" gives the table the no_cot row only: a row of a baseline that was not
    trained is left out, not an error; one that was trained and not decoded is an error (tested above)."""
    from local.utils.paths import baseline_rows

    cfg = compose(["experiment=c2ser", "exp_root=/e"])
    OmegaConf.set_struct(cfg, False)
    cfg.score.baselines.mine = "/elsewhere/decode_{set}_x"
    assert sorted(baseline_rows(cfg)) == ["mine", "no_cot", "no_e2v", "no_whisper", "text_only"]  # null: all
    assert baseline_rows(cfg)["no_cot"] == "/e/c2ser_no_cot/decode_{set}_implicit"
    cfg.baselines = ["no_cot"]
    assert sorted(baseline_rows(cfg)) == ["mine", "no_cot"]  # a path row is always asked for
    cfg.baselines = []
    cfg.score.baselines.mine = None
    assert baseline_rows(cfg) == {}


def test_a_decode_of_a_mode_the_system_no_longer_decodes_is_not_scored(tmp_path, caplog):
    """decode.modes changed from [explicit, implicit] to [implicit]: the old explicit decode stays on disk,
    and must not appear as a row of this configuration; a mode asked for and not decoded is an error."""
    write_set(tmp_path / "data" / "t1")
    exp = tmp_path / "exp" / "sys"
    outputs = [h for *_, h in HAND]
    write_hand_decode(exp / "decode_t1_implicit", outputs, 0.01)
    write_hand_decode(exp / "decode_t1_explicit", outputs, 0.01, mode="explicit")  # an earlier configuration's
    overrides = [f"data_root={tmp_path / 'data'}", "test_sets=[t1]", f"score.exp_dir={exp}", "score.attributes=false"]
    with caplog.at_level("WARNING"):
        score_main(compose([*overrides, "decode.modes=[implicit]"]))
    assert list(json.loads((exp / "results.json").read_text())["tables"]["t1"]) == ["implicit"]
    assert "modes ['explicit']" in caplog.text and "left out" in caplog.text
    with pytest.raises(FileNotFoundError, match="mode 'cot' has no decode: .*decode_t1_cot has no hyps.jsonl"):
        score_main(compose([*overrides, "decode.modes=[implicit,cot]"]))


def test_a_test_set_of_another_corpus_is_scored_on_the_shared_labels(tmp_path, capsys):
    """Cross-corpus: a model of two classes on a set that also holds happiness; the table names what it left out."""
    exp = tmp_path / "exp" / "sys"
    gold = [{"anger": 0.5, "happiness": 0.5}, {"sadness": 1.0}, {"happiness": 1.0},
            {"anger": 1.0}, {"sadness": 0.75, "anger": 0.25}, {"happiness": 1.0}]
    write_set(tmp_path / "data" / "t1", utt2dist={u: " ".join(f"{k}:{v}" for k, v in d.items())
                                                  for (u, *_), d in zip(HAND, gold)})
    write_hand_decode(exp / "decode_t1_implicit", [h for *_, h in HAND], 0.01, labels=["anger", "sadness"],
                      dists=[{"anger": 0.9, "sadness": 0.1}] * 6)
    score_main(compose([f"data_root={tmp_path / 'data'}", "test_sets=[t1]", f"score.exp_dir={exp}",
                        "score.attributes=false", "decode.modes=[implicit]", "score.baselines={}"]))
    row = json.loads((exp / "results.json").read_text())["tables"]["t1"]["implicit"]
    refs, hyps = ["anger", "sadness", "anger", "sadness"], ["anger", INVALID, INVALID, "sadness"]  # happiness: no class
    assert row["n"] == 4 and row["dropped"] == {"happiness": 2} and row["labels"] == ["anger", "sadness"]
    assert row["ua"] == classification_scores(refs, hyps, ["anger", "sadness"])["ua"] == 0.5
    # soft labels on the shared classes, renormalised: s1-a's {anger 0.5, happiness 0.5} is {anger 1}
    want = distribution_scores([{"anger": 0.9, "sadness": 0.1}] * 4,
                               [{"anger": 1.0}, {"sadness": 1.0}, {"anger": 1.0}, {"sadness": 0.75, "anger": 0.25}],
                               ["anger", "sadness"])
    assert row["js"] == pytest.approx(want["js"])
    assert ("implicit: scored on the labels shared with the model (anger, sadness); not scored, 2 utterances of "
            "the labels it does not have: happiness (2).") in capsys.readouterr().out


def test_the_papers_numbers_are_printed_beside_ours_as_published_rows(tmp_path):
    exp = tmp_path / "exp" / "sys"
    write_hand_decode(exp / "decode_t1_implicit", [h for *_, h in HAND], 0.01)
    cfg = compose([f"data_root={tmp_path / 'data'}", "test_sets=[t1]", f"score.exp_dir={exp}", "score.attributes=false",
                   "decode.modes=[implicit]", "score.baselines={}", "system=c2ser"])
    cfg.corpus.published = {"c2ser": {"t1": [{"row": "C²SER", "source": "c2ser.txt Table IV", "ua": 60.12,
                                              "wa": 61.0, "note": "the paper's Session 5 split"}],
                                      "t9": [{"row": "other set", "source": "x", "ua": 1.0}]},
                            "ambiguity": {"t1": [{"row": "GRPOz", "source": "y", "js": 0.1}]}}
    score_main(cfg)
    md = (exp / "results.md").read_text()
    assert "| C²SER [published] | 60.12 | 61.0 | – | – |" in md
    assert "- [published] C²SER: c2ser.txt Table IV; the paper's Session 5 split; as printed there." in md
    assert "other set" not in md and "GRPOz" not in md  # another set's, another system's
    document = json.loads((exp / "results.json").read_text())
    assert list(document["published"]) == ["t1"] and document["published"]["t1"][0]["ua"] == 60.12


@pytest.mark.parametrize("text, labels, want", [
    ("The emotion is anger.", ("anger", "sadness"), ("anger", None)),
    ("", ("anger",), (None, "empty output")),
    ("It is not sad at all.", ("anger", "sadness"), (None, "every label it names is negated")),
    ("She sounds surprised.", ("anger", "sadness"), (None, "names none of the labels (anger, sadness)")),
])
def test_each_record_says_which_label_it_was_read_as_or_why_none(text, labels, want):
    from local.eval.extract import explain
    assert explain(text, labels) == want


def test_the_table_reports_how_faithfully_outputs_quote_the_spoken_sentence():
    from local.eval.report import quotation_scores

    records = [{"hyp": 'She said "the cat sat" angrily.', "text": "The cat sat on the mat."},
               {"hyp": 'She said "a dog barked", so sad.', "text": "The cat sat on the mat."},
               {"hyp": "Sad.", "text": "The cat sat on the mat."},
               {"hyp": '“on the mat” sounds calm', "text": "The cat sat on the mat."}]
    assert quotation_scores(records) == {"rate": 0.75, "n": 3, "spoken": pytest.approx(2 / 3)}
    assert quotation_scores([{"hyp": "no quote", "text": "x"}]) == {"rate": 0.0, "n": 0, "spoken": None}
    row = {"ua": 0.5, "wa": 0.5, "f1": 0.5, "n": 4, "subsets": {}, "sec_per_utt": None, "invalid_rate": 0.0,
           "mean_words": 3.0, "per_class": {}, "labels": ["anger"], "quotes": quotation_scores(records)}
    md = results_markdown({"t": {"cot": row, "plain": {**row, "quotes": quotation_scores(records[2:3])}}})
    assert "| quotes % | quotes spoken % |" in md and "| 75.00 | 66.67 |" in md and "| 0.00 | – |" in md
    assert "quotes spoken % = of those, the ones whose quote is words of the transcript actually spoken" in md


def test_each_row_says_which_model_prompt_and_judge_it_is():
    row = {"ua": 0.5, "wa": 0.5, "f1": 0.5, "n": 2, "subsets": {}, "sec_per_utt": None, "invalid_rate": 0.0,
           "mean_words": 3.0, "per_class": {}, "labels": ["anger"]}
    provenance = {"tables": {"t": {"rows": {"implicit": {"model_dir": "exp/cogaudio/rl/model",
                                                         "target": "direct_response", "mode": "implicit"}}}}}
    md = results_markdown({"t": {"implicit": {**row, "judge": {"backend": "offline", "empathy": 2.0}},
                                 "attributes": row}}, provenance)
    assert "- implicit: model `exp/cogaudio/rl/model`, prompt of target `direct_response`, judge offline" in md
    assert "- attributes: a reference classifier (logistic regression on stage 2's attributes alone" in md


def test_a_set_scored_earlier_stays_in_the_report_while_its_decodes_are_unchanged(tmp_path):
    exp = tmp_path / "exp" / "sys"
    for name in ("t1", "t2"):
        write_set(tmp_path / "data" / name)
        write_hand_decode(exp / f"decode_{name}_implicit", [h for *_, h in HAND], 0.01, set_name=name)

    def score(sets):
        score_main(compose([f"data_root={tmp_path / 'data'}", f"test_sets=[{','.join(sets)}]", f"score.exp_dir={exp}",
                            "score.attributes=false", "decode.modes=[implicit]", "score.baselines={}"]))
        return json.loads((exp / "results.json").read_text())

    first = score(["t1", "t2"])
    second = score(["t1"])  # t2 not asked for: kept, and said to be from earlier
    assert second["tables"]["t2"] == first["tables"]["t2"]
    assert second["provenance"]["tables"]["t2"]["earlier"] == first["provenance"]["started"]
    md = (exp / "results.md").read_text()
    assert f"### t2 (scored earlier, {first['provenance']['started']}; its decodes unchanged since)" in md
    assert (exp / "confusion_t2_implicit.png").is_file()
    # t2 decoded again (another model): its old numbers are not shown any more, nor its plot
    write_hand_decode(exp / "decode_t2_implicit", ["It is neutral."] * 6, 0.01, set_name="t2")
    third = score(["t1"])
    assert list(third["tables"]) == ["t1"] and not (exp / "confusion_t2_implicit.png").exists()
