"""The data-dir reader, writer and validator: every error names its file and line."""
import json
import os
from pathlib import Path

import pytest

from local.bin.subset import main as subset_main
from local.data.kaldi import (DataDir, DataDirError, format_dist, parse_dist, read_table,
                              read_table_lenient, validate_data_dir)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_dir_round_trips(data_dir):
    data = validate_data_dir(data_dir)
    assert len(data) == 6
    assert (data_dir / "spk2utt").read_text().splitlines()[0] == "spk0 spk0-utt0 spk0-utt1 spk0-utt2"
    copy = data_dir.parent / "copy"
    data.save(copy)
    assert all((copy / f).read_bytes() == (data_dir / f).read_bytes() for f in os.listdir(data_dir))


@pytest.mark.parametrize("content, message", [
    ("b x\na y\n", "f:2: not sorted: 'a' comes after 'b'"),
    ("a x\na y\n", "f:2: duplicate id 'a'"),
    ("a x\n\nb y\n", "f:2: is an empty line"),
    ("a\n", "f:1: key 'a' has no value"),
    ("a x\r\n", "f:1: has a DOS line ending"),
])
def test_read_table_names_file_and_line(tmp_path, content, message):
    with pytest.raises(DataDirError) as e:
        read_table(write(tmp_path / "f", content))
    assert str(e.value).startswith(f"{tmp_path}/{message}")


def test_c_order_is_byte_order(tmp_path):
    # LC_ALL=C puts upper case before lower case and '-' before digits.
    assert read_table(write(tmp_path / "f", "A x\na x\n")) == {"A": "x", "a": "x"}
    with pytest.raises(DataDirError, match="not sorted"):
        read_table(write(tmp_path / "g", "a x\nA x\n"))


def test_lenient_reader_sorts_and_reports_duplicates(tmp_path):
    table, problems = read_table_lenient(write(tmp_path / "f", "c 1\na 2\nb 3\na 4\n"))
    assert list(table) == ["b", "c"]
    assert problems == {"a": f"{tmp_path / 'f'}: duplicate id 'a' on lines 2, 4"}


@pytest.mark.parametrize("table, line, message", [
    ("utt2emo", "spk0-utt1 bored\n", "utt2emo:2: unknown label 'bored' for 'spk0-utt1'"),
    ("utt2dist", "spk0-utt1 anger:0.5 sadness:0.4\n", "utt2dist:2: probabilities of 'spk0-utt1' sum to 0.9000"),
    ("utt2dist", "spk0-utt1 anger=1\n", "utt2dist:2: spk0-utt1: 'anger=1' is not label:probability"),
])
def test_validator_rejects_bad_labels(data_dir, table, line, message):
    lines = (data_dir / table).read_text().splitlines(keepends=True)
    lines[1] = line
    write(data_dir / table, "".join(lines))
    with pytest.raises(DataDirError) as e:
        validate_data_dir(data_dir)
    assert str(e.value).startswith(f"{data_dir}/{message}")


def test_validator_names_missing_ids_and_audio(data_dir):
    lines = (data_dir / "text").read_text().splitlines(keepends=True)
    write(data_dir / "text", "".join(lines[:2] + lines[3:]))
    with pytest.raises(DataDirError) as e:
        validate_data_dir(data_dir)
    assert str(e.value) == f"{data_dir}/text: id 'spk0-utt2' (utt2spk line 3) is missing"
    write(data_dir / "text", "".join(lines))

    Path((data_dir / "wav.scp").read_text().splitlines()[4].split()[1]).unlink()
    with pytest.raises(DataDirError, match=r"wav.scp:5: audio file of 'spk1-utt1' not found"):
        validate_data_dir(data_dir)
    validate_data_dir(data_dir, check_audio=False)


def test_validator_wants_speaker_prefixed_ids(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    write(d / "wav.scp", "u1 /x.wav\n")
    write(d / "utt2spk", "u1 spk1\n")
    with pytest.raises(DataDirError, match="utt2spk:1: utterance id 'u1' does not start with its speaker id 'spk1'"):
        validate_data_dir(d, check_audio=False)


def test_validator_checks_spk2utt(data_dir):
    write(data_dir / "spk2utt", "spk0 spk0-utt0\nspk1 spk1-utt0 spk1-utt1 spk1-utt2\n")
    with pytest.raises(DataDirError, match="spk2utt: disagrees with utt2spk for speaker 'spk0'"):
        validate_data_dir(data_dir)


def test_save_is_atomic_and_keeps_other_files(data_dir, monkeypatch):
    (data_dir / "attr_stats.json").write_text("{}")
    data = DataDir.load(data_dir)
    data.reject("spk0-utt0", "too\nlong")
    before = (data_dir / "text").read_text()

    import local.data.kaldi as kaldi

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(kaldi, "replace_dir", crash)
    with pytest.raises(RuntimeError):
        data.save(data_dir)
    assert (data_dir / "text").read_text() == before          # old dir intact
    assert not [p for p in data_dir.parent.iterdir() if p.name.startswith(".data.")]  # no temp left
    monkeypatch.undo()

    data.save(data_dir)
    assert (data_dir / "attr_stats.json").exists()
    assert (data_dir / "rejected").read_text() == "spk0-utt0 too long\n"
    assert "spk0-utt0" not in (data_dir / "text").read_text()
    validate_data_dir(data_dir)


def test_dist_round_trip():
    assert parse_dist(format_dist({"anger": 0.25, "fear": 0.75, "sadness": 0.0})) == {"anger": 0.25, "fear": 0.75}


def test_subset_cuts_every_table_and_the_targets(tmp_path):
    src = tmp_path / "src"
    utts = [f"spk{s}_u{i}" for s in (1, 2) for i in range(5)]
    DataDir({"wav.scp": {u: f"/x/{u}.wav" for u in utts}, "utt2spk": {u: u[:4] for u in utts},
             "utt2emo": {u: "anger" for u in utts}}).save(src)
    (src / "targets.jsonl").write_text("".join(json.dumps({"utt": u, "type": t}) + "\n"
                                               for u in utts for t in ("cot", "label")))
    (src / "attr_stats.json").write_text("{}")
    assert subset_main([str(src), str(tmp_path / "every"), "--every", "3"]) == 0
    every = DataDir.load(tmp_path / "every")
    assert every.utts == sorted(utts)[::3]
    assert set(every["utt2emo"]) == set(every.utts)
    records = [json.loads(line) for line in (tmp_path / "every" / "targets.jsonl").read_text().splitlines()]
    assert [r["utt"] for r in records] == [u for u in every.utts for _ in range(2)]
    assert (tmp_path / "every" / "attr_stats.json").exists()
    (tmp_path / "spk.txt").write_text("spk2\n")
    assert subset_main([str(src), str(tmp_path / "spk"), "--spk-list", str(tmp_path / "spk.txt")]) == 0
    assert DataDir.load(tmp_path / "spk").utts == [u for u in sorted(utts) if u.startswith("spk2")]
    (tmp_path / "none.txt").write_text("nobody\n")
    assert subset_main([str(src), str(tmp_path / "none"), "--utt-list", str(tmp_path / "none.txt")]) == 1


def test_combine_data_is_the_union_of_its_parts(caplog):
    from local.data.kaldi import combine_data

    s1 = DataDir({"utt2spk": {"b-1": "b"}, "utt2emo": {"b-1": "anger"}, "utt2dist": {"b-1": "anger:1.0000"}},
                 rejected={"b-2": "no audio"})
    s2 = DataDir({"utt2spk": {"a-1": "a", "a-2": "a"}, "utt2emo": {"a-1": "sadness", "a-2": "neutral"}})
    with caplog.at_level("WARNING"):
        whole = combine_data({"session1": s1, "session2": s2})
    assert whole.utts == ["a-1", "a-2", "b-1"] and list(whole["utt2emo"]) == ["a-1", "a-2", "b-1"]
    assert "utt2dist" not in whole and "utt2dist is left out (not in session2)" in caplog.text
    assert whole.rejected == {"b-2": "no audio"}
    with pytest.raises(DataDirError, match="utterance 'a-1' is also in session2"):
        combine_data({"session2": s2, "again": DataDir({"utt2spk": {"a-1": "a"}})})


def test_a_corpus_own_labels_pass_with_any_labels(data_dir, capsys):
    from local.bin.validate import main as validate_main

    lines = (data_dir / "utt2emo").read_text().splitlines()
    write(data_dir / "utt2emo", "\n".join(["spk0-utt0 fru", *lines[1:]]) + "\n")
    with pytest.raises(DataDirError, match="unknown label 'fru'"):
        validate_data_dir(data_dir)
    assert len(validate_data_dir(data_dir, labels=None)) == 6
    assert validate_main([str(data_dir)]) == 1 and "unknown label 'fru'" in capsys.readouterr().err
    assert validate_main(["--any-labels", str(data_dir)]) == 0


# --- utt2qa (SQA question/answer pairs) and utt2sentiment -------------------------------------------------

def test_qa_round_trips_and_malformed_values_are_named():
    from local.data.kaldi import format_qa, parse_qa

    pairs = [("谁要回家了？", "我妹妹。"), ('What did she say, "exactly"?', "Nothing.")]
    value = format_qa(pairs)
    assert "\n" not in value and "谁" in value  # one line, the script kept as it is
    assert parse_qa(value) == pairs and parse_qa("[]") == []
    for bad, message in [("[[\"q\", \"a\"]", "not JSON"), ('{"q": "a"}', "expected a JSON list"),
                         ('[["q", "a", "b"]]', "pair 1 is not \\[question, answer\\]"),
                         ('[["q", "a"], ["q2", 3]]', "pair 2 is not"), ('[["q", " "]]', "pair 1 has an empty answer")]:
        with pytest.raises(ValueError, match=message):
            parse_qa(bad)


def test_validator_names_a_bad_utt2qa_or_utt2sentiment_line(data_dir):
    from local.data.kaldi import format_qa

    utts = DataDir.load(data_dir).utts
    good = {u: format_qa([(f"What is sentence {i}?", f"Number {i}.")]) for i, u in enumerate(utts)}
    write(data_dir / "utt2qa", "".join(f"{u} {v}\n" for u, v in good.items()))
    assert validate_data_dir(data_dir)["utt2qa"] == good
    bad = dict(good, **{utts[3]: '[["What is it?"]]'})
    write(data_dir / "utt2qa", "".join(f"{u} {v}\n" for u, v in bad.items()))
    with pytest.raises(DataDirError) as e:
        validate_data_dir(data_dir)
    assert str(e.value).startswith(f"{data_dir}/utt2qa:4: {utts[3]}: pair 1 is not [question, answer]")
    (data_dir / "utt2qa").unlink()
    write(data_dir / "utt2sentiment", "".join(f"{u} {'positive' if i else 'happy'}\n" for i, u in enumerate(utts)))
    with pytest.raises(DataDirError, match=r"utt2sentiment:1: unknown sentiment 'happy' for 'spk0-utt0'"):
        validate_data_dir(data_dir)


def test_subset_keeps_utt2qa_and_utt2sentiment(tmp_path):
    from local.data.kaldi import format_qa, parse_qa

    src = tmp_path / "src"
    utts = [f"spk1_u{i}" for i in range(4)]
    DataDir({"wav.scp": {u: f"/x/{u}.wav" for u in utts}, "utt2spk": {u: "spk1" for u in utts},
             "utt2sentiment": {u: "neutral" for u in utts},
             "utt2qa": {u: format_qa([(f"Which one is {u}?", u)]) for u in utts}}).save(src)
    assert subset_main([str(src), str(tmp_path / "half"), "--every", "2"]) == 0
    half = DataDir.load(tmp_path / "half")
    assert set(half["utt2qa"]) == set(half["utt2sentiment"]) == {"spk1_u0", "spk1_u2"}
    assert parse_qa(half["utt2qa"]["spk1_u2"]) == [("Which one is spk1_u2?", "spk1_u2")]
