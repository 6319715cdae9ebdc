"""Stage 1 on bad input: each bad utterance is rejected by name, the good ones survive."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from local.data.audio import AudioError, read_audio
from local.data.format import format_data_dir
from local.data.kaldi import DataDir, DataDirError, read_table, validate_data_dir
from local.data.labels import EMOTIONS, LabelSet, load_label_map


def run_format(data_dir: Path, tmp_path: Path, **kw) -> DataDir:
    args = dict(min_dur=0.1, max_dur=20.0, nj=1)
    args.update(kw)
    labels = args.pop("labels", LabelSet())
    return format_data_dir(data_dir, data_dir, tmp_path / "audio", labels, **args)


def replace_line(path: Path, index: int, line: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[index] = line
    path.write_text("".join(lines))


def wav_of(data_dir: Path, utt: str) -> Path:
    return Path(read_table(data_dir / "wav.scp")[utt])


def test_clean_dir_passes_unchanged(data_dir, tmp_path):
    data = run_format(data_dir, tmp_path)
    assert len(data) == 6 and not data.rejected
    assert read_table(data_dir / "utt2dur")["spk0-utt0"] == "0.500"
    assert not (tmp_path / "audio").exists()  # 16 kHz mono files are used in place


def test_corrupt_empty_and_missing_audio_are_rejected(data_dir, tmp_path):
    wav_of(data_dir, "spk0-utt0").write_bytes(b"RIFF\x00\x00garbage")
    sf.write(wav_of(data_dir, "spk0-utt1"), np.zeros(0, dtype=np.float32), 16000)
    wav_of(data_dir, "spk1-utt0").unlink()
    data = run_format(data_dir, tmp_path)
    assert "unreadable audio" in data.rejected["spk0-utt0"]
    assert data.rejected["spk0-utt1"].startswith("spk0-utt1: empty audio (0 samples)")
    assert data.rejected["spk1-utt0"].startswith("spk1-utt0: audio file not found")
    assert data.utts == ["spk0-utt2", "spk1-utt1", "spk1-utt2"]
    assert set(read_table(data_dir / "rejected")) == {"spk0-utt0", "spk0-utt1", "spk1-utt0"}
    validate_data_dir(data_dir)


def test_non_finite_audio_is_rejected(data_dir, tmp_path):
    sf.write(wav_of(data_dir, "spk0-utt0"), np.array([0.1, np.nan, 0.2] * 8000, dtype=np.float32), 16000,
             subtype="FLOAT")
    with pytest.raises(AudioError, match="spk0-utt0: audio has NaN or inf samples"):
        read_audio(str(wav_of(data_dir, "spk0-utt0")), "spk0-utt0")
    assert "NaN or inf" in run_format(data_dir, tmp_path).rejected["spk0-utt0"]


def test_stereo_44k_is_converted_not_rejected(data_dir, tmp_path):
    t = np.arange(44100) / 44100
    left = 0.5 * np.sin(2 * np.pi * 220 * t)
    path = wav_of(data_dir, "spk1-utt2")
    sf.write(path, np.stack([left, left], axis=1), 44100)
    data = run_format(data_dir, tmp_path)
    assert not data.rejected
    new = data["wav.scp"]["spk1-utt2"]
    assert new == str((tmp_path / "audio" / "spk1-utt2.wav").resolve())
    info = sf.info(new)
    assert (info.samplerate, info.channels) == (16000, 1)
    assert data["utt2dur"]["spk1-utt2"] == "1.000"
    wav, _ = sf.read(new)
    assert abs(np.sqrt(np.mean(wav ** 2)) - 0.5 / np.sqrt(2)) < 0.01  # downmix kept the level


def test_unknown_label_rejected_known_aliases_mapped(data_dir, tmp_path):
    replace_line(data_dir / "utt2emo", 0, "spk0-utt0 bored\n")
    replace_line(data_dir / "utt2emo", 1, "spk0-utt1 exc\n")
    replace_line(data_dir / "utt2dist", 1, "spk0-utt1 exc:0.5 hap:0.25 sad:0.25\n")
    data = run_format(data_dir, tmp_path)
    assert data.rejected == {"spk0-utt0": "unknown label 'bored' (map it in corpus.label_map) in utt2emo"}
    assert data["utt2emo"]["spk0-utt1"] == "happiness"
    assert data["utt2dist"]["spk0-utt1"] == "happiness:0.7500 sadness:0.2500"


FOUR = ("anger", "happiness", "neutral", "sadness")  # IEMOCAP's standard set


def test_a_recipe_label_set_keeps_its_classes_and_renormalises_soft_labels(data_dir, tmp_path):
    labels = LabelSet(FOUR, load_label_map({"fru": None, "Frustration": None}))
    replace_line(data_dir / "utt2emo", 0, "spk0-utt0 fru\n")
    replace_line(data_dir / "utt2emo", 1, "spk0-utt1 exc\n")
    replace_line(data_dir / "utt2dist", 1, "spk0-utt1 excited:0.5 frustration:0.25 sadness:0.25\n")
    replace_line(data_dir / "utt2emo", 2, "spk0-utt2 sur\n")
    replace_line(data_dir / "utt2dist", 3, "spk1-utt0 frustration:1.0\n")
    replace_line(data_dir / "utt2dist", 4, "spk1-utt1 sadness:0.5 bored:0.5\n")
    data = run_format(data_dir, tmp_path, labels=labels)
    assert data.rejected == {
        "spk0-utt0": "label 'fru' is dropped by corpus.label_map in utt2emo",
        "spk0-utt2": "label 'sur' (surprise) is not in corpus.labels [anger, happiness, neutral, sadness] in utt2emo",
        "spk1-utt0": "utt2dist has no probability mass on corpus.labels (label 'frustration' is dropped by "
                     "corpus.label_map)",
        "spk1-utt1": "unknown label 'bored' (map it in corpus.label_map) in utt2dist",
    }
    assert data["utt2emo"] == {"spk0-utt1": "happiness", "spk1-utt2": "neutral"}
    assert data["utt2dist"]["spk0-utt1"] == "happiness:0.6667 sadness:0.3333"  # frustration's share taken out
    validate_data_dir(data_dir, labels=FOUR)


def test_a_name_of_the_set_stands_for_itself():
    assert LabelSet().lookup("calm") == "neutral" and LabelSet().lookup("Joy") == "happiness"
    eight = LabelSet((*EMOTIONS, "calm"))  # RAVDESS keeps calm apart from neutral
    assert eight.lookup("calm") == "calm" and eight.lookup("neu") == "neutral"
    with pytest.raises(ValueError, match="distinct"):
        LabelSet(("anger", "anger"))


def test_stage_1_reads_the_label_set_and_map_from_the_corpus_config(tmp_path):
    from conftest import make_data_dir
    from local.bin.format import main
    from local.utils.hydra import compose

    root = tmp_path / "data"
    root.mkdir()
    make_data_dir(tmp_path / "t").rename(root / "t")
    main(compose([f"data_root={root}", f"dump_root={tmp_path / 'dump'}", "train_set=t", "dev_set=t", "test_sets=[]",
                  "nj=1", "corpus.labels=[angry,sad]", "corpus.label_map={anger: angry, sadness: sad}"]))
    data = DataDir.load(root / "t")
    assert set(data["utt2emo"].values()) == {"angry", "sad"} and len(data) == 4
    assert set(data.rejected) == {"spk0-utt2", "spk1-utt2"}  # neutral: not in the set


def test_unsorted_is_repaired_duplicates_rejected(data_dir, tmp_path):
    lines = (data_dir / "text").read_text().splitlines(keepends=True)
    (data_dir / "text").write_text("".join(reversed(lines)) + "spk1-utt1 said twice\n")
    with pytest.raises(DataDirError, match="text:2: not sorted"):
        validate_data_dir(data_dir)
    data = run_format(data_dir, tmp_path)
    assert data.rejected == {"spk1-utt1": f"{data_dir / 'text'}: duplicate id 'spk1-utt1' on lines 2, 7"}
    assert len(data) == 5
    validate_data_dir(data_dir)


def test_duration_filter(data_dir, tmp_path):
    data = run_format(data_dir, tmp_path, max_dur=0.65)
    assert data.rejected["spk0-utt2"] == "duration 0.70 s is longer than max_dur 0.65 s"
    assert "spk0-utt1" in data.utts  # 0.6 s stays


def test_test_sets_are_not_duration_filtered(data_dir, tmp_path, caplog):
    data = run_format(data_dir, tmp_path, min_dur=0.55, max_dur=0.65, filter_duration=False)
    assert not data.rejected and len(data) == 6
    assert data["utt2dur"]["spk0-utt0"] == "0.500" and data["utt2dur"]["spk0-utt2"] == "0.700"
    assert "kept 4 utterances outside [min_dur, max_dur]" in caplog.text
    validate_data_dir(data_dir)


def test_test_sets_still_reject_what_cannot_be_kept(data_dir, tmp_path):
    wav_of(data_dir, "spk0-utt0").write_bytes(b"RIFF\x00\x00garbage")
    sf.write(wav_of(data_dir, "spk0-utt1"), np.zeros(0, dtype=np.float32), 16000)
    sf.write(wav_of(data_dir, "spk0-utt2"), np.array([0.1, np.inf] * 8000, dtype=np.float32), 16000,
             subtype="FLOAT")
    replace_line(data_dir / "utt2emo", 3, "spk1-utt0 bored\n")
    (data_dir / "text").write_text((data_dir / "text").read_text() + "spk1-utt1 said twice\n")
    data = run_format(data_dir, tmp_path, max_dur=0.65, filter_duration=False)
    assert "unreadable audio" in data.rejected["spk0-utt0"]
    assert "empty audio" in data.rejected["spk0-utt1"]
    assert "NaN or inf" in data.rejected["spk0-utt2"]
    assert data.rejected["spk1-utt0"] == "unknown label 'bored' (map it in corpus.label_map) in utt2emo"
    assert "duplicate id 'spk1-utt1'" in data.rejected["spk1-utt1"]
    assert data.utts == ["spk1-utt2"] and data["utt2dur"]["spk1-utt2"] == "0.700"  # longer than max_dur: kept


def test_entry_point_filters_train_and_dev_only(tmp_path):
    """The stage knows its test sets from cfg.test_sets, not from their names."""
    from conftest import make_data_dir
    from local.bin.format import main
    from local.utils.hydra import compose

    root = tmp_path / "data"
    root.mkdir()
    for name in ("a", "b", "c"):
        make_data_dir(tmp_path / name).rename(root / name)  # the wavs stay where wav.scp says
    main(compose([f"data_root={root}", f"dump_root={tmp_path / 'dump'}", "train_set=c", "dev_set=a",
                  "test_sets=[b]", "format.min_dur=0.55", "format.max_dur=0.65", "nj=1"]))
    assert len(DataDir.load(root / "c")) == len(DataDir.load(root / "a")) == 2  # only the 0.6 s ones
    assert len(DataDir.load(root / "b")) == 6 and not (root / "b" / "rejected").exists()


def test_utterance_missing_from_a_table_is_rejected(data_dir, tmp_path):
    lines = (data_dir / "utt2lang").read_text().splitlines(keepends=True)
    (data_dir / "utt2lang").write_text("".join(lines[1:]))
    data = run_format(data_dir, tmp_path)
    assert data.rejected == {"spk0-utt0": "missing from utt2lang"}


def test_segments_become_files(data_dir, tmp_path):
    (data_dir / "segments").write_text("spk0-utt0 spk0-utt0 0.1 0.3\n")
    for name in ("wav.scp", "utt2spk", "text", "utt2emo", "utt2dist", "utt2lang"):
        (data_dir / name).write_text((data_dir / name).read_text().splitlines(keepends=True)[0])
    (data_dir / "spk2utt").unlink()
    data = run_format(data_dir, tmp_path)
    assert data["utt2dur"] == {"spk0-utt0": "0.200"}
    assert not (data_dir / "segments").exists()


def test_segments_of_recordings_with_gaps_in_the_tables(tmp_path):
    """Two recordings, three segments, and one utterance that has no segment line."""
    root = tmp_path / "seg"
    root.mkdir()
    t = np.arange(32000) / 16000
    for reco, f0 in (("rec1", 150.0), ("rec2", 220.0)):
        sf.write(root / f"{reco}.wav", (0.3 * np.sin(2 * np.pi * f0 * t)).astype(np.float32), 16000)
    utts = {"spkA-1": "rec1 0.0 0.8", "spkA-2": "rec1 1.0 1.9", "spkB-1": "rec2 0.5 1.5", "spkB-2": None}
    (root / "wav.scp").write_text(f"rec1 {root / 'rec1.wav'}\nrec2 {root / 'rec2.wav'}\n")
    (root / "segments").write_text("".join(f"{u} {v}\n" for u, v in utts.items() if v))
    (root / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u in utts))
    (root / "text").write_text("".join(f"{u} words of {u}\n" for u in utts))
    (root / "utt2emo").write_text("".join(f"{u} anger\n" for u in utts))
    data = format_data_dir(root, root, tmp_path / "audio", LabelSet(), min_dur=0.1, max_dur=20.0)
    assert data.rejected == {"spkB-2": "no line in segments; wav.scp is keyed by recording"}
    assert data["utt2dur"] == {"spkA-1": "0.800", "spkA-2": "0.900", "spkB-1": "1.000"}
    assert data["wav.scp"]["spkB-1"] == str((tmp_path / "audio" / "spkB-1.wav").resolve())
    assert read_table(root / "rejected") == data.rejected
    validate_data_dir(root)


def test_segment_of_a_recording_missing_from_wav_scp(tmp_path):
    root = tmp_path / "seg"
    root.mkdir()
    sf.write(root / "rec1.wav", np.full(16000, 0.1, np.float32), 16000)
    (root / "wav.scp").write_text(f"rec1 {root / 'rec1.wav'}\n")
    (root / "segments").write_text("s-1 rec1 0.0 0.5\ns-2 rec9 0.0 0.5\ns-3 rec1 0.5\n")
    (root / "utt2spk").write_text("s-1 s\ns-2 s\ns-3 s\n")
    data = format_data_dir(root, root, tmp_path / "audio", LabelSet(), min_dur=0.1, max_dur=20.0)
    assert data.rejected["s-2"] == "segments names recording 'rec9', which is not in wav.scp"
    assert "expected '<recording> <start> <end>'" in data.rejected["s-3"]
    assert data.utts == ["s-1"]


def test_nothing_left_is_an_error(data_dir, tmp_path):
    with pytest.raises(DataDirError, match=r"no utterance survived formatting \(6 rejected: see .*; most often: "
                                           r"6 x duration # s is shorter than min_dur # s"):
        run_format(data_dir, tmp_path, min_dur=5.0)


def test_a_test_set_keeps_labels_outside_the_set_and_train_does_not(tmp_path):
    """Test sets are never filtered: stage 10 scores the labels a model shares with them and names the rest."""
    from conftest import make_data_dir
    from local.bin.format import main
    from local.utils.hydra import compose

    root = tmp_path / "data"
    root.mkdir()
    for name in ("tr", "te"):
        make_data_dir(tmp_path / name, labels=("anger", "sad", "joy")).rename(root / name)
    (root / "te" / "utt2emo").write_text((root / "te" / "utt2emo").read_text().replace("spk1-utt0 anger",
                                                                                      "spk1-utt0 xxx"))
    main(compose([f"data_root={root}", f"dump_root={tmp_path / 'dump'}", "train_set=tr", "dev_set=tr",
                  "test_sets=[te]", "nj=1", "corpus.labels=[anger,sadness]", "corpus.label_map={xxx: null}"]))
    train, test = DataDir.load(root / "tr"), DataDir.load(root / "te")
    assert set(train["utt2emo"].values()) == {"anger", "sadness"} and set(train.rejected) == {"spk0-utt2", "spk1-utt2"}
    assert test["utt2emo"] == {"spk0-utt0": "anger", "spk0-utt1": "sadness", "spk0-utt2": "happiness",
                               "spk1-utt1": "sadness", "spk1-utt2": "happiness"}  # joy spelled as the map does
    assert test.rejected == {"spk1-utt0": "label 'xxx' is dropped by corpus.label_map in utt2emo"}
    assert test["utt2dist"]["spk0-utt2"] == "happiness:1.0000"


# --- utt2sentiment from corpus.sentiment_map, utt2qa kept ------------------------------------------------

SENTIMENT_MAP = {"anger": "negative", "sadness": "negative", "neutral": "neutral", "happiness": "positive"}


def test_sentiment_is_written_from_the_mapped_emotion_and_utt2qa_is_kept(data_dir, tmp_path):
    from local.data.kaldi import format_qa, parse_qa

    utts = DataDir.load(data_dir).utts
    (data_dir / "utt2qa").write_text("".join(f"{u} {format_qa([(f'Which is {u}?', 'This one.')])}\n" for u in utts),
                                     encoding="utf-8")
    replace_line(data_dir / "utt2emo", 1, "spk0-utt1 sad\n")  # a corpus spelling: mapped before the sentiment
    data = run_format(data_dir, tmp_path, sentiment_map=SENTIMENT_MAP)
    assert not data.rejected
    assert data["utt2sentiment"] == {"spk0-utt0": "negative", "spk0-utt1": "negative", "spk0-utt2": "neutral",
                                     "spk1-utt0": "negative", "spk1-utt1": "negative", "spk1-utt2": "neutral"}
    saved = validate_data_dir(data_dir)
    assert saved["utt2sentiment"] == data["utt2sentiment"]
    assert parse_qa(saved["utt2qa"]["spk0-utt2"]) == [("Which is spk0-utt2?", "This one.")]


def test_a_sets_own_sentiment_wins_and_no_map_writes_none(data_dir, tmp_path):
    utts = DataDir.load(data_dir).utts
    (data_dir / "utt2sentiment").write_text("".join(f"{u} positive\n" for u in utts))  # MELD annotates its own
    data = run_format(data_dir, tmp_path, sentiment_map=SENTIMENT_MAP)
    assert set(data["utt2sentiment"].values()) == {"positive"}
    (data_dir / "utt2sentiment").unlink()
    assert "utt2sentiment" not in run_format(data_dir, tmp_path)


def test_an_emotion_the_sentiment_map_lacks_is_an_error(data_dir, tmp_path):
    from local.data.format import load_sentiment_map

    before = (data_dir / "utt2emo").read_bytes()
    with pytest.raises(DataDirError, match=r"corpus.sentiment_map has no sentiment for the label\(s\) neutral, "
                                           r"sadness of utt2emo"):
        run_format(data_dir, tmp_path, sentiment_map={"anger": "negative"})
    assert (data_dir / "utt2emo").read_bytes() == before and not (data_dir / "utt2sentiment").exists()
    with pytest.raises(ValueError, match="maps 'anger' to 'bad', not one of positive, negative, neutral"):
        load_sentiment_map({"anger": "bad"})
    assert load_sentiment_map(None) is None and load_sentiment_map({}) is None


def test_stage_1_reads_the_sentiment_map_from_the_corpus_config(tmp_path):
    from conftest import make_data_dir
    from local.bin.format import main
    from local.utils.hydra import compose

    root = tmp_path / "data"
    root.mkdir()
    make_data_dir(tmp_path / "t").rename(root / "t")
    args = [f"data_root={root}", f"dump_root={tmp_path / 'dump'}", "train_set=t", "dev_set=t", "test_sets=[]", "nj=1"]
    main(compose(args + ["corpus.sentiment_map={anger: negative, sadness: negative, neutral: neutral}"]))
    assert set(DataDir.load(root / "t")["utt2sentiment"].values()) == {"negative", "neutral"}
    (root / "t" / "utt2sentiment").unlink()
    main(compose(args))  # the default corpus has no map: no sentiment
    assert not (root / "t" / "utt2sentiment").exists()
