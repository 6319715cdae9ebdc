"""Stage 3: requests from a data dir, validation of teacher answers, targets.jsonl / targets.rejected."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from local.data.kaldi import DataDir, DataDirError, parse_dist
from local.reasoning.offline import OfflineTeacher
from local.reasoning.checks import names_label, parse_distribution_line
from local.reasoning.targets import TARGET_TYPES, TargetType, build_requests, check_target, format_problem, make_targets
from local.reasoning.teacher import Request, Teacher
from local.utils.hydra import compose

# The teacher-written emotion (ER) types, which the tests below were written for; the SR types, those written
# from the data and the speech tasks' are tested further down, with the tables they need.
ALL_TYPES = [t for t, spec in TARGET_TYPES.items() if spec.task == "er" and spec.from_data is None]

# utt: (label, text, lang, dist, attrs)
UTTS = {
    "spk1-a01": ("anger", "You took my seat again and did not even ask.", "en",
                 "anger:0.6667 disgust:0.3333", "pitch=High loudness=High rate=High pitch_hz=231.5"),
    "spk1-a02": ("happiness", "We finally got the keys to the new flat!", "en",
                 "happiness:1.0000", "pitch=High loudness=Medium rate=High"),
    "spk1-a03": ("neutral", "The meeting moved to room four.", "en",
                 "neutral:0.7500 sadness:0.2500", "pitch=Medium loudness=Medium rate=Medium"),
    "spk2-b01": ("sadness", "I never imagined the project would end like this.", "en",
                 "sadness:0.5000 anger:0.5000", "pitch=Low loudness=Low rate=Low"),
    "spk2-b02": ("surprise", "Wait, you sold the car already?", "en",
                 "surprise:0.8000 happiness:0.2000", "pitch=High loudness=Medium rate=Medium"),
    "spk2-b03": ("disgust", "There was hair in the soup, again.", "en",
                 "disgust:1.0000", "pitch=Low loudness=Medium rate=Low"),
    "spk3-c01": ("fear", "我听见楼下有人在撬门。", "cmn",
                 "fear:0.7500 surprise:0.2500", "pitch=High loudness=Low rate=High"),
}


def write_data_dir(path: Path, utts: dict = UTTS, drop: tuple[str, ...] = ()) -> Path:
    """A stage-2 data dir (no audio needed by stage 3: wav.scp points at a dummy file)."""
    dummy = path.parent / "dummy.wav"
    dummy.write_bytes(b"")
    tables = {
        "wav.scp": {u: str(dummy) for u in utts},
        "utt2spk": {u: u.split("-")[0] for u in utts},
        "text": {u: v[1] for u, v in utts.items()},
        "utt2emo": {u: v[0] for u, v in utts.items()},
        "utt2lang": {u: v[2] for u, v in utts.items()},
        "utt2dist": {u: v[3] for u, v in utts.items()},
        "utt2attr": {u: v[4] for u, v in utts.items()},
    }
    DataDir({k: v for k, v in tables.items() if k not in drop}).save(path)
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class ScriptedTeacher(Teacher):
    """Offline answers, except where a script replaces the answer of "<utt> <type>"."""

    name = "scripted"

    def __init__(self, script: dict[str, str | None]):
        self.script, self.offline, self.seen = script, OfflineTeacher(), []

    def generate(self, requests):
        self.seen += [r.key for r in requests]
        return [self.script[r.key] if r.key in self.script else self.offline.generate([r])[0] for r in requests]


def test_offline_targets_of_every_type_validate(tmp_path):
    data = write_data_dir(tmp_path / "train")
    counts = make_targets(data, OfflineTeacher(), ALL_TYPES)
    assert counts == {"written": len(UTTS) * len(ALL_TYPES), "rejected": 0}
    assert not (data / "targets.rejected").exists()
    records = read_jsonl(data / "targets.jsonl")
    assert [(r["utt"], r["type"]) for r in records] == sorted((u, t) for u in UTTS for t in ALL_TYPES)
    for r in records:
        assert r["label"] == UTTS[r["utt"]][0] and r["teacher"] == "offline" and r["target"]
        assert ("dist" in r) == (r["type"] == "ambiguity_cot")
    mandarin = {r["type"]: r["target"] for r in records if r["utt"] == "spk3-c01"}
    assert UTTS["spk3-c01"][1] in mandarin["c2ser_explicit"] and UTTS["spk3-c01"][1] in mandarin["ambiguity_cot"]
    tie = next(r for r in records if r["utt"] == "spk2-b01" and r["type"] == "ambiguity_cot")
    assert tie["dist"] == {"sadness": 0.5, "anger": 0.5}
    assert tie["target"].splitlines()[-1] == "Distribution: anger:0.50 sadness:0.50"
    assert "supports sadness" in tie["target"]  # of tied labels, the gold one leads the reasoning


def test_bad_answers_are_rejected_and_the_good_ones_kept(tmp_path):
    data = write_data_dir(tmp_path / "dev")
    explicit_ok = OfflineTeacher().generate(build_requests(DataDir.load(data), ["c2ser_explicit"])[0][:1])[0]
    script = {
        "spk1-a01 c2ser_implicit": "The speaker sounds calm and composed.",       # no gold label
        "spk1-a02 eips": "Emotion perception: happy. Intent: share. <response>Great!</response>",  # no tags
        "spk1-a03 eips": "<thought>Emotion perception: neutral. Intent: info. Strategy: answer.</thought>"
                         "<response>Okay.</response>",                              # a step is missing
        "spk2-b02 ambiguity_cot": "Keywords: x\nStep 1: a\nStep 2: b\nStep 3: c\n"
                                  "Distribution: happiness:0.70 surprise:0.30",     # wrong arg-max
        "spk2-b03 ambiguity_cot": "Keywords: x\nStep 1: a\nStep 2: b\nStep 3: c\nDistribution: mostly disgust",
        "spk2-b01 elaborate": "The emotion is sadness, clearly, from the tone.",    # quotes nothing
        "spk3-c01 summarize": None,                                                 # teacher failed
        "spk1-a01 direct_response": "<thought>x</thought><response>y</response>",
        "spk1-a01 c2ser_explicit": explicit_ok,                                     # a good scripted one
    }
    counts = make_targets(data, ScriptedTeacher(script), ALL_TYPES)
    bad = {k for k, v in script.items() if v is not explicit_ok}
    assert counts == {"written": len(UTTS) * len(ALL_TYPES) - len(bad), "rejected": len(bad)}

    lines = (data / "targets.rejected").read_text(encoding="utf-8").splitlines()
    rejected = {" ".join(l.split()[:2]): " ".join(l.split()[2:]) for l in lines}
    assert set(rejected) == bad and lines == sorted(lines)
    assert rejected["spk1-a01 c2ser_implicit"] == "does not name the gold label 'anger'"
    assert rejected["spk1-a02 eips"].startswith("not <thought>")
    assert "Psychological modelling" in rejected["spk1-a03 eips"]
    assert "arg-max happiness" in rejected["spk2-b02 ambiguity_cot"]
    assert "bad distribution" in rejected["spk2-b03 ambiguity_cot"]
    assert rejected["spk2-b01 elaborate"] == "quotes no words of the transcript"
    assert rejected["spk3-c01 summarize"] == "teacher gave no answer"
    assert "tags" in rejected["spk1-a01 direct_response"]

    kept = {f"{r['utt']} {r['type']}": r for r in read_jsonl(data / "targets.jsonl")}
    assert not bad & set(kept) and len(kept) == counts["written"]
    assert kept["spk1-a01 c2ser_explicit"]["target"] == explicit_ok
    assert kept["spk1-a01 c2ser_explicit"]["teacher"] == "scripted"

    # A clean re-run leaves no stale rejections behind.
    make_targets(data, OfflineTeacher(), ALL_TYPES)
    assert not (data / "targets.rejected").exists()


def test_a_missing_table_is_named_before_anything_is_asked(tmp_path):
    data = write_data_dir(tmp_path / "test", drop=("utt2attr",))
    teacher = ScriptedTeacher({})
    with pytest.raises(DataDirError, match=r"utt2attr: is missing; target type 'c2ser_explicit' needs it"):
        make_targets(data, teacher, ALL_TYPES)
    assert teacher.seen == []
    # a corpus with one label per utterance (MELD, ESD) has no soft labels: no ambiguity targets, said in the log
    counts = make_targets(write_data_dir(tmp_path / "t2", drop=("utt2dist",)), OfflineTeacher(), ["eips", "ambiguity_cot"])
    assert counts == {"written": 7, "rejected": 0}
    assert {r["type"] for r in read_jsonl(tmp_path / "t2" / "targets.jsonl")} == {"eips"}
    with pytest.raises(ValueError, match="unknown target type 'cot'"):
        make_targets(data, teacher, ["cot"])
    assert make_targets(data, OfflineTeacher(), ["eips", "summarize"]) == {"written": 14, "rejected": 0}


def test_a_teacher_that_answers_nothing_fails_the_stage(tmp_path):
    data = write_data_dir(tmp_path / "train")
    make_targets(data, OfflineTeacher(), ["eips"])
    before = (data / "targets.jsonl").read_bytes()
    silent = ScriptedTeacher({f"{u} eips": None for u in UTTS})
    with pytest.raises(RuntimeError, match="answered none of 7 requests"):
        make_targets(data, silent, ["eips"])
    assert (data / "targets.jsonl").read_bytes() == before  # the previous targets are untouched


def test_utterances_that_cannot_be_asked_are_rejected(tmp_path):
    utts = dict(UTTS)
    utts["spk1-a01"] = ("anger", "", "en", "anger:1.0000", "pitch=High loudness=High rate=High")
    utts["spk1-a02"] = ("happiness", "Yes!", "en", "happiness:1.0000", "pitch=High loudness=Medium")
    data = DataDir.load(write_data_dir(tmp_path / "x", utts))
    requests, rejected = build_requests(data, ["c2ser_explicit", "eips"], default_lang="en")
    reasons = {(u, t): r for u, t, r in rejected}
    assert reasons[("spk1-a01", "eips")] == "empty transcript"
    assert "rate" in reasons[("spk1-a02", "c2ser_explicit")]
    assert ("spk1-a02", "eips") not in reasons
    assert len(requests) == 2 * len(utts) - len(rejected)
    mandarin = next(r for r in requests if r.utt == "spk3-c01" and r.type == "c2ser_explicit")
    assert mandarin.lang == "cmn" and mandarin.attrs["pitch"] == "High"
    assert "a speaking rate of high, a volume level of low, and a pitch of high" in mandarin.prompt


def test_unmeasured_attributes_reject_only_the_types_that_state_them(tmp_path):
    from local.data.attributes import UNKNOWN
    from local.reasoning.targets import UNMEASURED

    assert UNMEASURED == UNKNOWN
    utts = dict(UTTS)
    utts["spk1-a01"] = ("anger", "You took my seat again.", "en", "anger:1.0000",   # a silent test clip
                        "pitch=unknown pitch_range=unknown loudness=Low rate=unknown f0_hz=nan lufs=-inf")
    utts["spk1-a02"] = ("happiness", "Yes!", "en", "happiness:1.0000",
                        "pitch=unknown loudness=Medium rate=High f0_hz=nan")
    data = write_data_dir(tmp_path / "test", utts)
    requests, rejected = build_requests(DataDir.load(data), ALL_TYPES)
    reasons = {(u, t): r for u, t, r in rejected}
    assert reasons == {("spk1-a01", "c2ser_explicit"): "attributes not measurable: pitch, rate",
                       ("spk1-a01", "ambiguity_cot"): "attributes not measurable: pitch, rate",
                       ("spk1-a02", "c2ser_explicit"): "attributes not measurable: pitch",
                       ("spk1-a02", "ambiguity_cot"): "attributes not measurable: pitch"}
    assert len(requests) == len(utts) * len(ALL_TYPES) - 4
    assert all("unknown" not in r.prompt for r in requests)

    counts = make_targets(data, OfflineTeacher(), ALL_TYPES)
    assert counts == {"written": len(utts) * len(ALL_TYPES) - 4, "rejected": 4}
    lines = (data / "targets.rejected").read_text(encoding="utf-8").splitlines()
    assert "spk1-a02 c2ser_explicit attributes not measurable: pitch" in lines


def test_label_and_distribution_checks():
    assert names_label("The speaker sounds ANGRY.", "anger")
    assert not names_label("The speaker is in danger.", "anger")          # a word, not a substring
    assert names_label("她听起来很害怕。", "fear")
    assert parse_distribution_line("Step 3: x\nDistribution: anger:0.50 sadness:0.50") == \
        {"anger": 0.5, "sadness": 0.5}
    assert parse_distribution_line("Distribution: Anger: 0.6, sadness = .4") == {"anger": 0.6, "sadness": 0.4}
    with pytest.raises(ValueError, match="sum to 1"):
        parse_distribution_line("Distribution: anger:0.9 sadness:0.9")
    tie = Request(key="u ambiguity_cot", type="ambiguity_cot", label="sadness", text="t",
                  dist={"sadness": 0.5, "anger": 0.5})
    answer = "Step 1: a\nStep 2: b\nStep 3: c\nDistribution: anger:0.55 sadness:0.45"
    assert check_target(tie, answer) is None  # either label of a tied majority is the gold majority


def test_format_problem_judges_the_format_alone(tmp_path):
    requests, _ = build_requests(DataDir.load(write_data_dir(tmp_path / "x")), ALL_TYPES)
    for request, answer in zip(requests, OfflineTeacher().generate(requests)):
        assert format_problem(request.type, answer, request.text) is None, (request.key, answer)
    explicit = ('At a fast pace, with a high-pitched tone and a loud volume: "Wait". '
                "The emotion was inferred to be fear.")
    cases = {
        ("c2ser_explicit", explicit): None,
        ("c2ser_explicit", "The emotion was inferred to be anger."):
            "does not describe the speech's rate, pitch, volume",
        ("c2ser_explicit", "At a slow pace, with a deep tone and a soft volume."): "names no emotion label",
        ("c2ser_implicit", "The emotion was inferred to be anger."): None,
        ("c2ser_implicit", explicit + " " + explicit): "40 words: not a short description in terms of the label",
        ("eips", "Emotion perception: anger. <response>x</response>"):
            "not <thought>...</thought><response>...</response>",
        ("eips", "<thought>Emotion perception: joy. Intent: x. Strategy: y.</thought><response>Hi</response>"):
            "thought lacks the EIPS step(s) Psychological modelling",
        ("eips", "<thought>Emotion perception: joy. Intent: x. Psychological modelling: y. Strategy: z.</thought>"
                 "<response> </response>"): "empty response",
        ("direct_response", "<response>There, there.</response>"): "contains <thought>/<response> tags",
        ("ambiguity_cot", "Step 1: a\nStep 3: c\nDistribution: anger:1.00"): "lacks Step 2",
        ("ambiguity_cot", "Step 1: a\nStep 2: b\nStep 3: c\nDistribution: anger"):
            "bad distribution: no label:probability on the 'Distribution:' line",
        ("summarize", "The speaker is dealing with a long day."): "names no emotion label",
        ("elaborate", 'The emotion is sadness: "sold the car".'): None,  # no transcript: any quotation
        ("direct_response", "  "): "empty output",
    }
    for (t, text), want in cases.items():
        assert format_problem(t, text) == want, (t, text)
    assert format_problem("elaborate", 'Sadness: "sold the car".', "Wait, you sold the car already?") is None
    assert format_problem("elaborate", 'Sadness: "sold the bike".', "Wait, you sold the car already?") == \
        "quotes no words of the transcript"
    with pytest.raises(ValueError, match="unknown target type 'cot'"):
        format_problem("cot", "x")
    # a well-formed answer for the wrong label: the format passes, the target does not
    request = Request(key="u c2ser_explicit", type="c2ser_explicit", label="anger", text="Wait")
    assert check_target(request, explicit) == "does not name the gold label 'anger'"
    eips = ("<thought>Emotion perception: joy. Intent: x. Psychological modelling: y. Strategy: z.</thought>"
            "<response>Great!</response>")
    assert format_problem("eips", eips) is None
    assert check_target(Request(key="u eips", type="eips", label="anger", text="t"), eips) == \
        "thought does not name the gold label 'anger'"



def test_a_new_target_type_is_one_registry_entry(tmp_path, monkeypatch):
    """A type registered in TARGET_TYPES alone (no module edited) is asked, checked and written by stage 3."""

    def check_toy(text, transcript=None):
        return None if text.startswith("Verdict: ") else "no 'Verdict:' line"

    def check_toy_gold(request, answer):
        verdict = answer.split()[1]
        return None if verdict == request.label else f"verdict {verdict} is not the gold label '{request.label}'"

    class ToyTeacher(OfflineTeacher):
        def toy(self, r):
            if r.utt == "spk2-b01":
                raise ValueError(f"{r.key}: no toy verdict")       # a writer that fails: no answer
            return {"spk1-a01": "Verdict: disgust (not anger)",     # names the gold, argues for another
                    "spk1-a02": "Verdict: sadness",                 # names another label only
                    "spk1-a03": "neutral, I think"}.get(r.utt, f"Verdict: {r.label}")  # not the format

    monkeypatch.setitem(TARGET_TYPES, "toy", TargetType(
        teacher_prompt="eips_teacher", instruction="c2ser_implicit_instruction", tables=(),
        check=check_toy, names_label=True, check_gold=check_toy_gold, keeps_dist=True, offline="toy"))

    assert format_problem("toy", "Verdict: anger") is None and format_problem("toy", " ") == "empty output"
    assert format_problem("toy", "anger") == "no 'Verdict:' line"
    with pytest.raises(ValueError, match="the offline teacher cannot write target type 'toy'"):
        OfflineTeacher().generate([Request(key="u toy", type="toy", label="anger", text="t")])

    data = write_data_dir(tmp_path / "train")
    assert make_targets(data, ToyTeacher(), ["toy", "eips"]) == {"written": len(UTTS) + 3, "rejected": 4}
    lines = (data / "targets.rejected").read_text(encoding="utf-8").splitlines()
    assert lines == ["spk1-a01 toy verdict disgust is not the gold label 'anger'",
                     "spk1-a02 toy does not name the gold label 'happiness'",
                     "spk1-a03 toy no 'Verdict:' line",
                     "spk2-b01 toy teacher gave no answer"]
    records = read_jsonl(data / "targets.jsonl")
    toy = {r["utt"]: r for r in records if r["type"] == "toy"}
    assert sorted(toy) == ["spk2-b02", "spk2-b03", "spk3-c01"]
    for utt, r in toy.items():
        assert r["target"] == f"Verdict: {UTTS[utt][0]}" and r["dist"] == parse_dist(UTTS[utt][3])
        assert r["teacher"] == "offline"
    assert all("dist" not in r for r in records if r["type"] == "eips")

def test_entry_point_writes_every_set(tmp_path):
    from local.bin.targets import main

    for name in ("train", "dev", "test"):
        write_data_dir(tmp_path / name)
    cfg = compose([f"data_root={tmp_path}", "train_set=train", "dev_set=dev", "test_sets=[test]",
                   "targets.types=[c2ser_implicit,elaborate]"])
    main(cfg)
    for name in ("train", "dev", "test"):
        records = read_jsonl(tmp_path / name / "targets.jsonl")
        assert len(records) == 2 * len(UTTS) and {r["type"] for r in records} == {"c2ser_implicit", "elaborate"}


# --- AudioLLM-Reasoning's four tasks: SR, label-only, ASR and SQA targets ------------------------------

SENTIMENT = {"spk1-a01": "negative", "spk1-a02": "positive", "spk1-a03": "neutral", "spk2-b01": "negative",
             "spk2-b02": "neutral", "spk2-b03": "negative", "spk3-c01": "negative"}
QA = {u: [(f"What does utterance {u} say?", UTTS[u][1])] for u in UTTS}
QA["spk1-a02"] = [("What did they get?", "The keys."), ("Of what?", "The new flat.")]
QA["spk3-c01"] = [("楼下有人在做什么？", "撬门。"), ("说话人听见了什么？", "有人在撬门。"), ("在哪里？", "楼下。")]
TASK_TYPES = ["summarize_sr", "elaborate_sr", "label_only", "label_only_sr", "asr", "sqa"]


def write_task_dir(path: Path, sentiment: dict | None = SENTIMENT, qa: dict | None = QA, utts: dict = UTTS) -> Path:
    from local.data.kaldi import format_qa

    write_data_dir(path, utts)
    data = DataDir.load(path)
    if sentiment is not None:
        data["utt2sentiment"] = dict(sentiment)
    if qa is not None:
        data["utt2qa"] = {u: format_qa(pairs) for u, pairs in qa.items()}
    data.save(path)
    return path


def test_sr_requests_carry_the_sentiment_and_its_wording(tmp_path):
    sentiment = {u: s for u, s in SENTIMENT.items() if u != "spk2-b02"}
    data = DataDir.load(write_task_dir(tmp_path / "x", sentiment=sentiment))
    requests, rejected = build_requests(data, ["summarize", "summarize_sr", "elaborate_sr", "asr"])
    by_key = {r.key: r for r in requests}
    sr = by_key["spk1-a02 summarize_sr"]
    assert sr.label == "positive" and "The speaker's sentiment (positive, negative, neutral): positive" in sr.prompt
    assert "Summarize why the speaker conveys this sentiment (positive, negative, neutral)" in sr.prompt
    assert "emotion" not in sr.prompt
    er = by_key["spk1-a02 summarize"]
    assert er.label == "happiness" and "The speaker's emotion: happiness" in er.prompt
    # an utterance without the task's label is not asked for that task; its other types are
    assert rejected == [("spk2-b02", "summarize_sr", "no label in utt2sentiment"),
                        ("spk2-b02", "elaborate_sr", "no label in utt2sentiment")]
    assert "spk2-b02 summarize" in by_key and not any(r.type == "asr" for r in requests)  # asr: from the data


def test_every_task_type_is_written_and_checked(tmp_path):
    path = write_task_dir(tmp_path / "train")
    counts = make_targets(path, OfflineTeacher(), ["elaborate", *TASK_TYPES])
    n_pairs = sum(len(p) for p in QA.values())
    assert counts == {"written": 6 * len(UTTS) + n_pairs, "rejected": 0}
    records = read_jsonl(path / "targets.jsonl")
    assert all(r["task"] == TARGET_TYPES[r["type"]].task for r in records)
    by = {(r["utt"], r["type"]): r for r in records if r["type"] != "sqa"}
    for utt, (label, text, *_) in UTTS.items():
        assert by[(utt, "label_only")]["target"] == f"The speaker's speech reflects {'an' if label == 'anger' else 'a'} " \
                                                    f"{label} state."
        assert by[(utt, "label_only_sr")]["target"] == f"The speaker's sentiment is {SENTIMENT[utt]}."
        assert by[(utt, "asr")]["target"] == text and "label" not in by[(utt, "asr")]
        for t in ("summarize_sr", "elaborate_sr", "label_only_sr"):
            assert by[(utt, t)]["label"] == SENTIMENT[utt] and by[(utt, t)]["task"] == "sr"
            assert names_label(by[(utt, t)]["target"], SENTIMENT[utt])
        assert by[(utt, "elaborate")]["label"] == label and by[(utt, "elaborate")]["teacher"] == "offline"
        assert by[(utt, "label_only")]["teacher"] == by[(utt, "asr")]["teacher"] == "data"
    assert '"' in by[("spk2-b01", "elaborate_sr")]["target"]  # evidence-grounded: quotes the transcript
    sqa = [r for r in records if r["type"] == "sqa"]
    assert [(r["utt"], r["question"], r["target"]) for r in sqa] == [(u, q, a) for u in sorted(QA) for q, a in QA[u]]
    assert all("label" not in r and r["task"] == "sqa" and r["teacher"] == "data" for r in sqa)
    assert all("question" not in r for r in records if r["type"] != "sqa")


def test_a_corpus_without_sentiment_or_questions_has_no_such_targets(tmp_path, caplog):
    path = write_task_dir(tmp_path / "test", sentiment=None, qa=None)
    teacher = ScriptedTeacher({})
    with caplog.at_level("WARNING"):
        counts = make_targets(path, teacher, TASK_TYPES)
    assert counts == {"written": 2 * len(UTTS), "rejected": 0}  # label_only and asr
    assert {r["type"] for r in read_jsonl(path / "targets.jsonl")} == {"label_only", "asr"}
    assert teacher.seen == []  # nothing left to ask the teacher
    assert caplog.text.count("no utt2qa, so no sqa targets") == 1
    assert caplog.text.count("no utt2sentiment, so no") == 3


def test_data_targets_reject_what_the_data_cannot_give(tmp_path):
    utts = dict(UTTS, **{"spk1-a03": ("neutral", "", "en", "neutral:1.0000", "pitch=Low loudness=Low rate=Low")})
    qa = dict(QA, **{"spk2-b02": []})  # nobody asked about it: no SQA target, and no rejection
    path = write_task_dir(tmp_path / "dev", utts=utts, qa=qa)
    (path / "utt2qa").write_text((path / "utt2qa").read_text(encoding="utf-8").replace(
        '[["What does utterance spk1-a01', '[["What does utterance spk1-a01" ]] [["'), encoding="utf-8")
    counts = make_targets(path, OfflineTeacher(), ["asr", "sqa"])
    lines = (path / "targets.rejected").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("spk1-a01 sqa bad utt2qa value: not JSON")
    assert lines[1:] == ["spk1-a03 asr empty transcript"]
    records = read_jsonl(path / "targets.jsonl")
    assert not any(r["utt"] == "spk2-b02" and r["type"] == "sqa" for r in records)
    assert counts == {"written": len(records), "rejected": 2}


def test_the_new_types_formats_and_golds():
    cases = {
        ("label_only", "The speaker's speech reflects a neutral state."): None,
        ("label_only", "The speaker's speech reflects an anger state"): None,
        ("label_only", "The speaker is angry."): "not \"The speaker's speech reflects a <label> state.\"",
        ("label_only_sr", "The speaker's sentiment is positive."): None,
        ("label_only_sr", "The speaker's sentiment is happy."):
            "not \"The speaker's sentiment is <positive|negative|neutral>.\"",
        ("summarize_sr", "They got the flat they wanted, so the sentiment is positive."): None,
        ("summarize_sr", "They got the flat; the emotion is happiness."): "names no sentiment (positive, negative, neutral)",
        ("elaborate_sr", 'The sentiment is negative: "hair in the soup".'): None,
        ("elaborate_sr", "The sentiment is negative, judging by the soup."): "quotes nothing",
        ("asr", "we finally got the keys"): None,
        ("asr", "Transcript:\nwe finally got the keys"): "more than one line",
        ("sqa", "The keys."): None,
        ("sqa", "<answer>The keys.</answer>"): "contains markup tags",
    }
    for (t, text), want in cases.items():
        assert format_problem(t, text) == want, (t, text)
    assert format_problem("elaborate_sr", 'Negative: "the car".', "There was hair in the soup, again.") == \
        "quotes no words of the transcript"
    asr = Request(key="u asr", type="asr", text="We finally got the keys to the new flat!")
    assert check_target(asr, "we finally got the KEYS to the new flat") is None  # case and punctuation aside
    assert check_target(asr, "We finally got the keys.") == "is not the utterance's transcript"
    wrong = Request(key="u label_only_sr", type="label_only_sr", label="negative", text="t")
    assert check_target(wrong, "The speaker's sentiment is positive.") == "does not name the gold label 'negative'"
    sr = Request(key="u summarize_sr", type="summarize_sr", label="positive", text="Yes!")
    assert check_target(sr, OfflineTeacher().generate([sr])[0]) is None
    with pytest.raises(ValueError, match="'anger' is not a sentiment"):
        OfflineTeacher().summarize(Request(key="u summarize_sr", type="summarize_sr", label="anger", text="x"))


def test_register_target_type(monkeypatch):
    from local.reasoning.checks import check_plain_line
    from local.reasoning.targets import label_only_targets, register_target_type

    monkeypatch.setattr("local.reasoning.targets.TARGET_TYPES", dict(TARGET_TYPES))
    from local.reasoning import targets

    spec = TargetType(from_data=label_only_targets, instruction="questions", task="sr", check=check_plain_line)
    assert register_target_type("sr_plain", spec) is spec and targets.TARGET_TYPES["sr_plain"] is spec
    assert register_target_type("sr_plain", spec) is spec  # the same again: a no-op
    with pytest.raises(ValueError, match="target type 'sr_plain' is already registered"):
        register_target_type("sr_plain", TargetType(from_data=label_only_targets, instruction="questions",
                                                    task="er", check=check_plain_line))
    with pytest.raises(ValueError, match="unknown task 'ner'"):
        register_target_type("ner", TargetType(from_data=label_only_targets, instruction="questions", task="ner",
                                               check=check_plain_line))
    with pytest.raises(ValueError, match="task 'sqa' has no question pool; use instruction 'record'"):
        register_target_type("qa2", TargetType(from_data=label_only_targets, instruction="questions", task="sqa",
                                               check=check_plain_line))
    with pytest.raises(ValueError, match="give exactly one"):
        TargetType(teacher_prompt="eips_teacher", from_data=label_only_targets, instruction="x", check=check_plain_line)
    assert "sr_plain" not in TARGET_TYPES
