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
from local.eval.judge import JudgeItem, offline_empathy
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

ROW_KEYS = {"ua", "wa", "f1", "n", "subsets", "sec_per_utt", "invalid_rate", "mean_words", "per_class"}
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
    assert teacher.asked == [render("label_extraction", text=t) for t in outputs[:2] + outputs[3:4]]
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


def test_decode_and_score_entry_points(tiny_dirs, test_dirs, monkeypatch, capsys):
    # a user's own data dir: wav.scp only, one entry unreadable
    user = test_dirs / "mine"
    user.mkdir()
    wavs = read_table(test_dirs / "data" / "test" / "wav.scp")
    (user / "wav.scp").write_text("".join(f"x{i} {p}\n" for i, p in enumerate(list(wavs.values())[:3]))
                                  + "x9 /no/such/file.wav\n")
    model = build_tiny(tiny_dirs).eval()
    asked = []
    monkeypatch.setattr(alm, "load_alm", lambda path, device: asked.append((path, device)) or model)
    cfg = compose([f"data_root={test_dirs / 'data'}",
                   f"dump_root={test_dirs / 'dump'}", f"exp_root={test_dirs / 'exp'}",
                   f"test_sets=[test,{user}]", "decode.batch_size=4", "decode.device=cpu",
                   "decode.prompts.explicit.max_new_tokens=6", "decode.prompts.implicit.max_new_tokens=3"])
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
    results = json.loads((exp / "results.json").read_text())
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
    model = build_tiny(tiny_dirs).eval()
    monkeypatch.setattr(alm, "load_alm", lambda path, device: model)
    cfg = compose([f"data_root={test_dirs / 'data'}", f"dump_root={test_dirs / 'dump'}",
                   f"exp_root={test_dirs / 'exp'}", "test_sets=[test]", "decode.batch_size=4", "decode.device=cpu",
                   "decode.modes=[explicit]", "decode.prompts.explicit.max_new_tokens=6", "decode.dist=true",
                   "score.attributes=false"])
    decode_main(cfg)
    decode_dir = test_dirs / "exp" / "c2ser" / "decode_test_explicit"
    records, timing = read_decode_dir(decode_dir)
    assert timing["readout"] == {"answer_prefix": "\nDistribution:", "separator": " ", "labels": None}
    assert timing["readout_seconds"] > 0
    table = read_table(decode_dir / "hyp_dist")
    assert list(table) == tables.utts and all("dist" not in json.loads(line)
                                              for line in (decode_dir / "hyps.jsonl").read_text().splitlines())
    # hyp_dist is the read-out after each hypothesis (here recomputed from the audio, not the feature cache)
    readout = Readout(model.tokenizer)
    instruction = load_prompt(cfg.decode.prompts.explicit.instruction)
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
    row = json.loads((exp / "results.json").read_text())["test"]["explicit"]
    gold = [parse_dist(tables["utt2dist"][u]) for u in tables.utts]
    scores = distribution_scores([parse_dist(table[u]) for u in tables.utts], gold, EMOTIONS)
    assert {k: row[k] for k in ("js", "bc", "brier", "ece", "acc_dist", "n_dist")} == {
        "js": scores["js"], "bc": scores["bc"], "brier": scores["brier"], "ece": scores["ece"],
        "acc_dist": scores["acc"], "n_dist": 6}
    assert set(row) == ROW_KEYS | {"js", "bc", "brier", "ece", "acc_dist", "n_dist"}
    md = (exp / "results.md").read_text()
    assert "| sec/utt | n | JS (bits) | BC | Brier | ECE | acc dist % |" in md
    assert (f"| 6 | {row['js']:.4f} | {row['bc']:.4f} | {row['brier']:.4f} | {row['ece']:.4f} | "
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


def write_hand_decode(decode_dir: Path, outputs, sec_per_utt: float, set_name="t1", mode="implicit"):
    records = [{"utt": u, "hyp": h, "label": ref, "subset": sub, "lang": "en", "text": "x", "n_tokens": 5}
               for (u, ref, sub, _), h in zip(HAND, outputs)]
    write_decode_dir(decode_dir, records, {"n": 6, "seconds": 6 * sec_per_utt, "sec_per_utt": sec_per_utt,
                                           "tokens_per_utt": 5.0, "set": set_name, "mode": mode})


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

    results = json.loads((exp / "results.json").read_text())
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
    assert "| system | UA | WA | F1 | UA conflict | UA consistent | invalid % | words | sec/utt | n |" in md
    assert (f"| implicit | {100 * row['ua']:.2f} | 50.00 | {100 * row['f1']:.2f} | "
            f"{100 * row['subsets']['conflict']['ua']:.2f} | {100 * row['subsets']['consistent']['ua']:.2f} | "
            f"16.67 | {row['mean_words']:.1f} | 0.01 | 6 |") in md

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
                   "score.attributes=false", "score.judge_rubrics=[empathy]", "judge=offline"])
    score_main(cfg)
    row = json.loads((exp / "results.json").read_text())["t1"]["implicit"]
    want = [offline_empathy(JudgeItem(utt=u, output=h, label=ref, text="x"))["empathy"]
            for (u, ref, _, _), h in zip(HAND, outputs)]
    assert len(set(want)) > 1  # the outputs differ in empathy, so the mean says something
    assert row["judge"] == {"empathy": pytest.approx(np.mean(want)), "n_judged": 6}
    assert f"| {np.mean(want):.2f} |" in (exp / "results.md").read_text()
    assert "| empathy |" in (exp / "results.md").read_text()


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
                   "test_sets=[test]"])
    score_main(cfg)
    row = json.loads((exp / "results.json").read_text())["test"]["attributes"]
    records, timing = read_decode_dir(exp / "attr_baseline" / "test")
    scores = classification_scores([r["label"] for r in records], [r["hyp"] for r in records], EMOTIONS)
    assert set(row) == ROW_KEYS and row["n"] == 40 and row["ua"] == scores["ua"] > 0.7
    assert row["invalid_rate"] == 0 and row["mean_words"] == 1 and row["sec_per_utt"] == timing["sec_per_utt"]
    assert set(row["subsets"]) == {"conflict", "consistent"}
    assert (exp / "confusion_test_attributes.png").read_bytes().startswith(PNG_SIGNATURE)
