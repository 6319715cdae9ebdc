"""LIME-style synthesis: prosody moves the way the literature says, labels are consistent."""
import importlib.util
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from local.data.synth import (EMOTION_PROSODY, EspeakEngine, Rendering, Voice, coloured_noise, lime_subset,
                              mix_at_snr, render, simulate_votes, stable_seed, synthesize_all)
from local.utils.hydra import compose

ROOT = Path(__file__).resolve().parents[2]
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
VOICE = Voice("spk01", {"en": "en-us+m3", "cmn": "cmn-latn-pinyin+m3"})


def load_prepare():
    spec = importlib.util.spec_from_file_location("prepare", ROOT / "egs/mini_lime/prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stable_seed_is_stable():
    assert stable_seed(1, "a") == stable_seed(1, "a") == 3673330623977531562
    assert stable_seed(1, "a") != stable_seed(1, "b")


def test_mix_at_snr_hits_the_snr():
    rng = np.random.default_rng(0)
    speech = rng.standard_normal(16000)
    noise = coloured_noise(16000, rng, 1.0)
    mixed = mix_at_snr(speech, noise, 10.0)
    snr = 10 * np.log10(np.mean(speech ** 2) / np.mean((mixed - speech) ** 2))
    assert snr == pytest.approx(10.0, abs=1e-6)


def test_votes_are_distributions():
    rng = np.random.default_rng(0)
    for _ in range(50):
        dist = simulate_votes("anger", "high", rng)
        assert sum(dist.values()) == pytest.approx(1.0)
        # every share is votes / n for one annotator count n in 3..12
        assert any(all(abs(p * n - round(p * n)) < 1e-9 for p in dist.values()) for n in range(3, 13))
    blended = [simulate_votes("anger", "high", rng, blend=("sadness", 0.45)) for _ in range(300)]
    mean = {e: np.mean([d.get(e, 0) for d in blended]) for e in ("anger", "sadness")}
    assert mean["anger"] == pytest.approx(0.95 * 0.55, abs=0.05)
    assert mean["sadness"] == pytest.approx(0.95 * 0.45, abs=0.05)


def test_subsets():
    assert lime_subset("anger", "anger") == "consistent"
    assert lime_subset("anger", "fear") == "conflict"
    assert lime_subset("neutral", "fear") == "neutral_text"


def measure(wav: np.ndarray) -> tuple[float, float, float]:
    """(median F0 Hz, active duration s, active RMS dB) of a rendering."""
    import librosa

    f0, voiced, _ = librosa.pyin(wav, fmin=60, fmax=500, sr=16000, frame_length=1024, hop_length=320)
    active = np.abs(wav) > 0.05 * np.abs(wav).max()
    rms = 20 * np.log10(np.sqrt(np.mean(wav[active] ** 2)))
    return float(np.nanmedian(f0[voiced])), float(active.sum() / 16000), float(rms)


@needs_espeak
def test_emotions_move_prosody_along_the_literature():
    text = "I never imagined the project would end like this."
    out = {}
    for emotion in ("neutral", "anger", "sadness", "fear"):
        r = Rendering(f"spk01-x-{emotion}", VOICE, text, "en", emotion, "high", seed=1)
        out[emotion] = measure(render(r, EspeakEngine()))
    assert out["anger"][0] > out["neutral"][0] > out["sadness"][0]
    assert out["fear"][0] > out["anger"][0]
    assert out["sadness"][1] > out["neutral"][1] > out["anger"][1]   # slower, faster
    assert out["anger"][2] > out["neutral"][2] + 6 > out["sadness"][2] + 6  # louder, softer (dB)
    assert np.isclose(EMOTION_PROSODY["anger"][3], 2 * EMOTION_PROSODY["happiness"][3])


@needs_espeak
def test_rendering_is_deterministic_and_mandarin_works(tmp_path):
    rs = [Rendering("spk01-a-anger-mid", VOICE, "我从来没有想到。", "cmn", "anger", "mid", seed=5, snr_db=10.0),
          Rendering("spk01-b-fear-low", VOICE, "Hello there.", "en", "fear", "low", seed=6)]
    first = synthesize_all(rs, EspeakEngine(), tmp_path / "a", nj=2, progress=False)
    second = synthesize_all(rs, EspeakEngine(), tmp_path / "b", nj=1, progress=False)
    for utt in first:
        assert Path(first[utt][0]).read_bytes() == Path(second[utt][0]).read_bytes()
        assert first[utt][1] > 0.5
    again = synthesize_all(rs, EspeakEngine(), tmp_path / "a", nj=1, progress=False)  # resumes: no work
    assert again == first


def test_mini_lime_plan_meets_the_corpus_spec():
    prepare = load_prepare()
    cfg = compose(["corpus=mini_lime"], recipe_conf=ROOT / "egs/mini_lime/conf")
    cfg.corpus.texts = str(ROOT / "egs/mini_lime" / cfg.corpus.texts)
    plan = prepare.plan(cfg.corpus)
    assert len(plan) >= 3000
    texts = {r.text: r for r in plan}
    assert len(texts) >= 24 and sum(r.lang == "cmn" for r in texts.values()) >= 4
    renderings = defaultdict(set)
    voices = defaultdict(set)
    for r in plan:
        renderings[r.text].add((r.emotion, r.intensity))
        voices[r.text].add(r.voice.spk)
    assert all(len(v) == 21 for v in renderings.values())     # 7 emotions × 3 intensities
    assert all(len(v) >= 6 for v in voices.values())
    by_split = defaultdict(list)
    for r in plan:
        by_split[r.extra["split"]].append(r)
    train_spk = {r.voice.spk for r in by_split["train"]}
    train_txt = {r.text for r in by_split["train"]}
    test_spk = {r.voice.spk for r in by_split["test"]}
    assert not train_spk & test_spk
    assert len({r.text for r in by_split["test"]} - train_txt) >= 4
    assert set(Counter(r.extra["subset"] for r in by_split["test"])) == {"consistent", "conflict", "neutral_text"}
    assert 0.1 < np.mean([r.blend is not None for r in plan]) < 0.2
    assert 0.1 < np.mean([r.snr_db is not None for r in plan]) < 0.3
