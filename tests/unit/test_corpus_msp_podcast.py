"""The MSP-Podcast preparer on fake copies of release 1.12 (CSV) and of an older one (JSON, Audio/,
Validation, the misspelt labels_concensus)."""
from __future__ import annotations

import pytest
from helpers.fake_msp_podcast import build, build_old

from local.data.corpora.msp_podcast import prepare
from local.data.kaldi import parse_dist


@pytest.fixture
def release(tmp_path):
    return build(tmp_path)


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
    base = build_old(tmp_path)
    sets = prepare(base)
    assert sorted(sets) == ["development", "train"]
    assert parse_dist(sets["train"]["utt2dist"]["spk127-MSP-PODCAST_0001_0009"]) == {"angry": 1.0}
