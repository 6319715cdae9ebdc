"""Voice-activity segmentation of long recordings (local/data/segments.py) and segments files."""
from __future__ import annotations

import importlib.util
import logging
import math
import subprocess
import sys

import numpy as np
import pytest

import local.data.segments as seg_mod
from local.data.segments import Segmenter, frame_energy_db, read_segments, split_long
from tests.helpers.long_recording import have_espeak, long_recording

needs_espeak = pytest.mark.skipif(not have_espeak(), reason="espeak-ng not installed (tools/install.sh installs it)")
HAVE_SILERO = importlib.util.find_spec("silero_vad") is not None
METHODS = ["energy", pytest.param("silero", marks=pytest.mark.skipif(
    not HAVE_SILERO, reason="silero-vad not installed (pip install silero-vad)"))]
TOL = 0.3  # seconds, every boundary


def check_shape(segs, max_seconds, duration):
    assert segs == sorted(segs)
    for (s, e), nxt in zip(segs, segs[1:] + [(math.inf, math.inf)]):
        assert 0 <= s < e <= duration and e - s <= max_seconds + 1e-9 and e <= nxt[0]
        assert type(s) is float and type(e) is float


@needs_espeak
def test_long_recording_has_separated_utterances():
    wav, truth = long_recording(60, seed=0)
    assert wav.dtype == np.float32 and len(wav) == 60 * 16000
    assert 6 <= len(truth) <= 12
    gaps = [b[0] - a[1] for a, b in zip(truth, truth[1:])]
    assert min(gaps) >= 0.8 - 1e-3 and max(gaps) <= 3.0
    assert all(2.0 < e - s < 5.0 for s, e in truth)


@needs_espeak
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed,noise", [(0, 0.002), (1, 0.01)])
def test_finds_each_utterance_within_tolerance(method, seed, noise):
    wav, truth = long_recording(60, seed=seed, noise_rms=noise)
    segs = Segmenter(method)(wav)
    check_shape(segs, 30.0, 60.0)
    assert len(segs) == len(truth), (segs, truth)
    err = np.abs(np.asarray(segs) - np.asarray(truth))
    print(f"\n{method} seed={seed} noise={noise}: max |start err| {err[:, 0].max():.3f} s, "
          f"max |end err| {err[:, 1].max():.3f} s (pad 0.1 s included)")
    assert err.max() <= TOL


@needs_espeak
@pytest.mark.parametrize("method", METHODS)
def test_long_speech_is_cut_in_low_energy_frames(method):
    # Pauses shorter than min_silence are bridged: one ~17 s region that must be cut to <= 4 s.
    wav, truth = long_recording(20, seed=0, pause=(0.2, 0.35))
    segs = Segmenter(method, max_seconds=4.0)(wav)
    check_shape(segs, 4.0, 20.0)
    assert len(segs) >= 5
    assert segs[0][0] <= truth[0][0] + TOL and segs[-1][1] >= truth[-1][1] - TOL
    assert all(a[1] == b[0] for a, b in zip(segs, segs[1:]))  # cuts, not gaps: no speech dropped
    db = frame_energy_db(wav)
    speech_db = np.percentile(db, 90)
    for s, cut in segs[:-1]:
        i = int(round((cut - 0.0125) / 0.01))
        window = db[int((s + 2.0) / 0.01):int((s + 4.0) / 0.01)]
        assert db[i] < speech_db - 20, (cut, db[i], speech_db)
        assert db[i] <= window.min() + 3.0
        assert cut < s + 4.0 - 0.05 or db[i] < speech_db - 20  # not a blind cut at max_seconds


def test_split_long_picks_quietest_frame_in_window():
    db = np.full(1000, -20.0)  # 10 s of loud frames with pauses; each cut's window is [start + 2, start + 4]
    for t, level in ((2.5, -70.0), (3.3, -60.0), (6.0, -60.0), (8.5, -60.0)):
        db[int(t * 100) - 5:int(t * 100) + 5] = level
    pieces = split_long([(0.0, 10.0)], db, 4.0, 0.25)
    cuts = [e for _, e in pieces[:-1]]
    assert np.allclose(cuts, [2.5, 6.0, 8.5], atol=0.05), cuts  # 2.5 beats the later 3.3: quieter
    flat = split_long([(0.0, 10.0)], np.full(1000, -20.0), 4.0, 0.25)
    assert all(e - s <= 4.0 for s, e in flat) and flat[0][0] == 0.0 and flat[-1][1] == 10.0


@pytest.mark.parametrize("method", METHODS)
def test_no_speech_gives_nothing(method):
    rng = np.random.default_rng(0)
    seg = Segmenter(method)
    assert seg(np.zeros(10 * 16000, np.float32)) == []
    assert seg((1e-4 * rng.standard_normal(10 * 16000)).astype(np.float32)) == []
    assert seg((1e-2 * rng.standard_normal(10 * 16000)).astype(np.float32)) == []
    assert seg(np.zeros(0, np.float32)) == [] and seg(np.zeros(100, np.float32)) == []


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown VAD method"):
        Segmenter("webrtc")
    with pytest.raises(ValueError, match="max_seconds"):
        Segmenter("energy", max_seconds=0.4)
    with pytest.raises(ValueError, match="mono"):
        Segmenter("energy")(np.zeros((2, 16000), np.float32))


def test_auto_falls_back_to_energy_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(seg_mod, "silero_unavailable", lambda: "ModuleNotFoundError: No module named 'silero_vad'")
    monkeypatch.setattr(seg_mod, "_fallback_warned", False)
    with caplog.at_level(logging.WARNING, logger=seg_mod.__name__):
        assert Segmenter().method == "energy" and Segmenter().method == "energy"
    warnings = [r for r in caplog.records if "silero_vad" in r.getMessage()]
    assert len(warnings) == 1 and "energy" in warnings[0].getMessage()


@pytest.mark.skipif(not HAVE_SILERO, reason="silero-vad not installed (pip install silero-vad)")
def test_silero_is_chosen_loaded_once_and_leaves_torch_threads_alone():
    assert Segmenter().method == "silero"
    assert seg_mod.load_silero() is seg_mod.load_silero()
    code = ("import torch; torch.set_num_threads(2); from local.data.segments import load_silero; "
            "load_silero(); print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "2"  # silero_vad's import sets 1 process-wide


def test_read_segments_kaldi_and_short_forms(tmp_path):
    kaldi = tmp_path / "segments"
    kaldi.write_text("rec1-b rec1 5.0 9.5\nrec1-a rec1 0 4.25\n\nrec2-a rec2 1.5 -1\n")
    assert read_segments(kaldi) == {"rec1": [("rec1-a", 0.0, 4.25), ("rec1-b", 5.0, 9.5)],
                                    "rec2": [("rec2-a", 1.5, math.inf)]}
    short = tmp_path / "short"
    short.write_text("a/b.wav 0.5 2\na/b.wav 3 -1\n")
    assert read_segments(short) == {"a/b.wav": [("a/b.wav-0000050-0000200", 0.5, 2.0),
                                                ("a/b.wav-0000300-end", 3.0, math.inf)]}
    (tmp_path / "empty").write_text("")
    assert read_segments(tmp_path / "empty") == {}


@pytest.mark.parametrize("text,line,what", [
    ("s1 r1 0 1 extra\n", 1, "got 5 fields"),
    ("s1 r1 0 1\nr1 2 3\n", 2, "got 3"),
    ("s1 r1 0 1\ns2 r1 zero 1\n", 2, "not numbers"),
    ("s1 r1 0 nan\n", 1, "finite"),
    ("s1 r1 2 1\n", 1, "not before"),
    ("s1 r1 1 1\n", 1, "not before"),
    ("s1 r1 -0.5 1\n", 1, "negative"),
    ("s1 r1 0 -2\n", 1, "negative"),
    ("s1 r1 0 1\n\ns1 r2 0 1\n", 3, "duplicate segment id"),
    ("r1 0 1\nr1 0 1\n", 2, "duplicate segment id"),
])
def test_read_segments_bad_line_names_file_and_line(tmp_path, text, line, what):
    path = tmp_path / "segments"
    path.write_text(text)
    with pytest.raises(ValueError, match=what) as info:
        read_segments(path)
    assert f"{path}:{line}:" in str(info.value)
