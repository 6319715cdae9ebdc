"""The statistics probe: what encoder outputs say about emotion, by logistic regression."""
import json

import numpy as np
import pytest

from local.bin.stats_probe import main as probe_main
from local.data.audio import write_wav
from local.data.kaldi import DataDir
from local.utils.hydra import compose

SR = 16000
# Two "emotions" that differ in pitch and level only, as in mini_lime's prosody.
VOICES = {"anger": (260.0, 0.3), "sadness": (130.0, 0.03)}


def make_set(path, n, seed, registers=None):
    """n utterances of each emotion; with ``registers`` (speaker -> level factor) each speaker voices
    both emotions at one pitch and their own loudness, speakers taking turns."""
    rng = np.random.default_rng(seed)
    audio = path.parent.parent / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    tables = {"wav.scp": {}, "utt2spk": {}, "utt2emo": {}}
    for label, (f0, level) in VOICES.items():
        for i in range(n):
            spk = list(registers)[i % len(registers)] if registers else f"spk{i % 2}"
            utt = f"{spk}-{label}-{seed}-{i}"
            t = np.arange(int(SR * rng.uniform(0.6, 1.0))) / SR
            f = (200.0 if registers else f0) * (1 + 0.05 * rng.standard_normal())
            amp = level * (registers[spk] if registers else 1)
            wav = amp * np.sin(2 * np.pi * f * t) + 0.002 * rng.standard_normal(len(t))
            write_wav(audio / f"{utt}.wav", wav.astype(np.float32))
            tables["wav.scp"][utt] = str(audio / f"{utt}.wav")
            tables["utt2spk"][utt], tables["utt2emo"][utt] = utt.split("-")[0], label
    DataDir(tables).save(path)


@pytest.mark.slow
def test_log_mel_statistics_separate_what_the_audio_separates(tmp_path, capsys):
    make_set(tmp_path / "data" / "train", 8, seed=0)
    make_set(tmp_path / "data" / "t1", 4, seed=1)
    cfg = compose([f"data_root={tmp_path / 'data'}", f"exp_root={tmp_path / 'exp'}", "test_sets=[t1]",
                   "model.e2v.path=null", "stats_probe.per_speaker=false"])
    probe_main(cfg)
    results = json.loads((tmp_path / "exp" / "stats_probe" / "results.json").read_text())
    assert list(results) == ["log_mel", "whisper", "e2v", "e2v_utt"]
    assert {s: r["n"] for s, r in results["log_mel"].items()} == {"train": 16, "t1": 8}
    assert results["log_mel"]["t1"]["ua"] == 1.0  # pitch and level are in the log-mel statistics
    for feature in results.values():
        assert all(0.0 <= r["ua"] <= 1.0 for r in feature.values())
    md = (tmp_path / "exp" / "stats_probe" / "results.md").read_text()
    assert md.startswith("| features | UA train | UA t1 |") and "| log_mel | 100.0 | 100.0 |" in md
    assert md in capsys.readouterr().out


def test_unknown_features_are_refused(tmp_path):
    cfg = compose([f"data_root={tmp_path}", "stats_probe.features=[mfcc]", "model.e2v.path=null"])
    with pytest.raises(ValueError, match="unknown \\['mfcc'\\]"):
        probe_main(cfg)


def test_per_speaker_statistics_see_past_an_unseen_speakers_register(tmp_path):
    # anger is a speaker's louder voice: the test speaker's sadness is louder than the train speakers' anger
    make_set(tmp_path / "data" / "train", 10, seed=0, registers={"soft": 0.1, "mid": 0.3})
    make_set(tmp_path / "data" / "t1", 6, seed=1, registers={"loud": 3.0})
    cfg = compose([f"data_root={tmp_path / 'data'}", f"exp_root={tmp_path / 'exp'}", "test_sets=[t1]",
                   "model.e2v.path=null", "stats_probe.features=[log_mel]"])
    results = probe_main(cfg)
    assert list(results) == ["log_mel", "log_mel per speaker"]
    assert results["log_mel per speaker"]["t1"]["ua"] == 1.0
    assert results["log_mel"]["t1"]["ua"] <= 0.75
