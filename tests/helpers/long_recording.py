"""A long recording of real (synthetic) speech with known utterance boundaries.

Sines or noise bursts would let a VAD pass that fails on speech: espeak-ng gives
fricatives, stops and word gaps, the sounds that make boundaries hard.  Each
utterance's own leading/trailing silence is trimmed before it is placed, so the
truth is the speech extent rather than wherever espeak happened to pad.
"""
from __future__ import annotations

import functools
import io
import shutil
import subprocess

import numpy as np
import soundfile as sf
import soxr

SR = 16000
# (espeak voice, text). Mandarin goes in as tone-numbered pinyin: Debian's espeak-ng reads no Hanzi.
SENTENCES = (
    ("en-us", "The quick brown fox jumps over the lazy dog near the river bank."),
    ("en-us", "She sells sea shells by the sea shore every single summer."),
    ("en-us", "I cannot believe you actually did that without asking me first."),
    ("en-us", "Please remember to bring the documents to the meeting tomorrow."),
    ("en-us", "Nobody told me the train would be this late again."),
    ("en-us", "What a wonderful surprise to see all of you here tonight."),
    ("en-gb", "Fifty students finished the physics test before lunch."),
    ("en-gb", "It is getting dark, so we should probably head home now."),
    ("cmn-latn-pinyin", "jin1 tian1 de5 tian1 qi4 zhen1 de5 fei1 chang2 hao3."),
    ("cmn-latn-pinyin", "wo3 men5 ming2 tian1 zao3 shang4 yi4 qi3 qu4 gong1 yuan2 ba5."),
)
TRIM_REL = 0.01  # samples below 1% of the utterance peak at either end count as espeak's padding


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


@functools.lru_cache(maxsize=None)
def utterance(voice: str, text: str, speed: int = 165) -> np.ndarray:
    """One sentence at 16 kHz, trimmed to its speech, at about -26 dBFS active RMS."""
    proc = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
                          capture_output=True, check=True)
    wav, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    wav = soxr.resample(wav, sr, SR).astype(np.float32)
    loud = np.flatnonzero(np.abs(wav) > TRIM_REL * np.abs(wav).max())
    wav = wav[loud[0]:loud[-1] + 1]
    active = wav[np.abs(wav) > 0.02 * np.abs(wav).max()]
    wav = wav * np.float32(0.05 / np.sqrt(np.mean(active ** 2)))
    wav.setflags(write=False)
    return wav


def long_recording(seconds: float = 60.0, seed: int = 0, pause: tuple[float, float] = (0.8, 3.0),
                   noise_rms: float = 0.002, lead: float = 1.0
                   ) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Utterances separated by pauses drawn from ``pause``, in white noise of ``noise_rms``.

    As many sentences as fit in ``seconds`` (with ``lead`` seconds of noise at
    each end), drawn without repeats; returns (wav float32 16 kHz, truth
    [(start, end)] in seconds).  Raises RuntimeError when espeak-ng is missing.
    """
    if not have_espeak():
        raise RuntimeError("espeak-ng is not installed (tools/install.sh installs it)")
    rng = np.random.default_rng(seed)
    total = int(round(seconds * SR))
    out = np.zeros(total, dtype=np.float32)
    truth: list[tuple[float, float]] = []
    pos = int(lead * SR)
    for k in rng.permutation(len(SENTENCES)):
        utt = utterance(*SENTENCES[k])
        if pos + len(utt) + int(lead * SR) > total:
            break
        out[pos:pos + len(utt)] = utt
        truth.append((pos / SR, (pos + len(utt)) / SR))
        pos += len(utt) + int(rng.uniform(*pause) * SR)
    out += (noise_rms * rng.standard_normal(total)).astype(np.float32)
    return out, truth
