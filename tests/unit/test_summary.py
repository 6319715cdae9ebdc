"""The data-stage summary table counts what a test set kept unmeasured."""
from local.bin.summary import summarise
from local.data.kaldi import DataDir


def test_unknown_levels_are_counted(tmp_path):
    DataDir({"utt2spk": {"a-1": "a"}, "utt2attr": {"a-1": "pitch=Low loudness=Low rate=High f0_hz=90"}}).save(
        tmp_path / "train")
    DataDir({"utt2spk": {"b-1": "b", "b-2": "b", "b-3": "b"},
             "utt2attr": {"b-1": "pitch=unknown pitch_range=unknown loudness=Low rate=unknown f0_hz=nan",
                          "b-2": "pitch=High loudness=Low rate=unknown phones_per_sec=nan",
                          "b-3": "pitch=High loudness=Medium rate=Medium"}}).save(tmp_path / "test")
    DataDir({"utt2spk": {"c-1": "c"}}).save(tmp_path / "dev")  # before stage 2
    lines = summarise(tmp_path, tmp_path / "dump", ["train", "dev", "test"]).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {r[0]: dict(zip(header, r)) for r in ([c.strip() for c in l.strip("|").split("|")] for l in lines[2:])}
    assert rows["test"]["pitch levels"] == "High:2 unknown:1"
    assert rows["test"]["unmeasured"] == "2 (pitch:1 pitch_range:1 rate:2)"
    assert rows["train"]["unmeasured"] == "0" and rows["dev"]["unmeasured"] == "-"


def test_per_label_counts_follow_the_labels_the_sets_hold(tmp_path):
    """A recipe's own set (RAVDESS's calm) gets its column; core labels first, in C²SER's order."""
    DataDir({"utt2spk": {"a-1": "a", "a-2": "a", "a-3": "a"},
             "utt2emo": {"a-1": "calm", "a-2": "sadness", "a-3": "anger"}}).save(tmp_path / "train")
    DataDir({"utt2spk": {"b-1": "b"}, "utt2emo": {"b-1": "calm"}}).save(tmp_path / "test")
    lines = summarise(tmp_path, tmp_path / "dump", ["train", "test"]).splitlines()
    assert "per label (ang sad cal)" in lines[0]
    assert "| 1 1 1 |" in lines[2] and "| 0 0 1 |" in lines[3]
