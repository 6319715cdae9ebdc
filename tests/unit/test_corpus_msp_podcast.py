"""The MSP-Podcast preparer on fake copies of release 1.12 (CSV) and of an older one (JSON, Audio/,
Validation, the misspelt labels_concensus)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from local.data.audio import write_wav
from local.data.corpora.msp_podcast import prepare
from local.data.kaldi import parse_dist

ROWS = [  # FileName, EmoClass, SpkrID, Split_Set
    ("MSP-PODCAST_0001_0008.wav", "N", "127", "Train"), ("MSP-PODCAST_0001_0009.wav", "A", "127", "Train"),
    ("MSP-PODCAST_0002_0033.wav", "X", "Unknown", "Development"), ("MSP-PODCAST_0003_0001.wav", "C", "45", "Test1"),
    ("MSP-PODCAST_0004_0001.wav", "O", "46", "Test2"), ("MSP-PODCAST_test3_0001.wav", "", "Unknown", "Test3"),
]
WORKERS = {  # file -> primary classes of its annotators
    "MSP-PODCAST_0001_0008.wav": ["Neutral", "Neutral", "Sad"], "MSP-PODCAST_0001_0009.wav": ["Angry", "Angry"],
    "MSP-PODCAST_0002_0033.wav": ["Happy", "Other-confused", "Neutral", "Contempt"],
    "MSP-PODCAST_0003_0001.wav": ["Contempt", "Disgust"], "MSP-PODCAST_0004_0001.wav": ["Other-bored"],
}


def audio_and_transcripts(base, audio="Audios"):
    (base / audio).mkdir(parents=True)
    (base / "Transcripts").mkdir()
    for name, *_ in ROWS:
        write_wav(base / audio / name, np.zeros(1600, np.float32))
        (base / "Transcripts" / name.replace(".wav", ".txt")).write_text(f"words of {name[:-4]}\n")


@pytest.fixture
def release(tmp_path):
    base = tmp_path / "MSP-PODCAST-1.12"
    audio_and_transcripts(base)
    (base / "Labels").mkdir()
    lines = ["FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set"]
    lines += [f"{f},{c},2.2,4.0,2.6,{s},Female,{p}" for f, c, s, p in ROWS]
    (base / "Labels" / "labels_consensus.csv").write_bytes("\r\n".join(lines).encode() + b"\r\n")
    detail = ["FileName,EmoDetail"] + [f'{f},"WORKER{i:08d}; {m}; Concerned,Amused; A:2.0; V:4.0; D:3.0;"'
                                       for f, majors in WORKERS.items() for i, m in enumerate(majors)]
    (base / "Labels" / "labels_detailed.csv").write_text("\n".join(detail) + "\n")
    return base


def test_splits_speakers_labels_and_soft_labels(release):
    sets = prepare(release.parent)
    assert sorted(sets) == ["development", "test1", "test2", "test3", "train"]
    train = sets["train"]
    assert train.utts == ["spk127-MSP-PODCAST_0001_0008", "spk127-MSP-PODCAST_0001_0009"]
    assert train["utt2emo"] == {"spk127-MSP-PODCAST_0001_0008": "N", "spk127-MSP-PODCAST_0001_0009": "A"}
    assert parse_dist(train["utt2dist"]["spk127-MSP-PODCAST_0001_0008"]) == pytest.approx(
        {"neutral": 2 / 3, "sad": 1 / 3}, abs=1e-4)
    dev = sets["development"]
    assert dev["utt2spk"] == {"unkMSP-PODCAST_0002_0033-MSP-PODCAST_0002_0033": "unkMSP-PODCAST_0002_0033"}
    assert parse_dist(dev["utt2dist"]["unkMSP-PODCAST_0002_0033-MSP-PODCAST_0002_0033"]) == {
        "contempt": 0.25, "happy": 0.25, "neutral": 0.25, "other": 0.25}
    assert dev["text"]["unkMSP-PODCAST_0002_0033-MSP-PODCAST_0002_0033"] == "words of MSP-PODCAST_0002_0033"
    assert "utt2emo" not in sets["test3"] and len(sets["test3"]) == 1  # no public labels
    assert not any(d.rejected for d in sets.values())


def test_a_missing_wav_and_a_corrupted_detail_row_are_rejected_and_nothing_else_is_lost(release):
    (release / "Audios" / "MSP-PODCAST_0001_0009.wav").unlink()
    detailed = release / "Labels" / "labels_detailed.csv"
    detailed.write_text(detailed.read_text().replace('"WORKER00000000; Contempt;', '"WORKER00000000;;'))
    sets = prepare(release)
    rejected = {u: why for d in sets.values() for u, why in d.rejected.items()}
    assert sorted(rejected) == ["spk127-MSP-PODCAST_0001_0009", "spk45-MSP-PODCAST_0003_0001"]
    assert rejected["spk127-MSP-PODCAST_0001_0009"].startswith("no audio: MSP-PODCAST_0001_0009.wav")
    assert "labels_detailed.csv:11: cannot read the annotator's answer" in rejected["spk45-MSP-PODCAST_0003_0001"]
    assert sum(len(d) for d in sets.values()) == 4


def test_an_older_release_json_audio_and_validation(tmp_path):
    base = tmp_path / "old"
    audio_and_transcripts(base, audio="Audio")
    (base / "label").mkdir()
    consensus = {f: {"EmoClass": c, "EmoAct": 2.2, "EmoVal": 4.0, "EmoDom": 2.6, "SpkrID": s, "Gender": "Male",
                     "Split_Set": "Validation" if p == "Development" else p} for f, c, s, p in ROWS[:3]}
    (base / "label" / "labels_concensus.json").write_text(json.dumps(consensus))
    detail = {f: {f"W{i}": {"EmoClass_Major": m, "EmoAct": 2.0} for i, m in enumerate(WORKERS[f])}
              for f in consensus}
    (base / "label" / "labels_detailed.json").write_text(json.dumps(detail))
    sets = prepare(base)
    assert sorted(sets) == ["development", "train"]
    assert parse_dist(sets["train"]["utt2dist"]["spk127-MSP-PODCAST_0001_0009"]) == {"angry": 1.0}
