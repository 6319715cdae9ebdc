"""Audio reading for every stage: one function, one set of checks.

Everything downstream assumes 16 kHz mono float32 with finite samples, so the
checks live here and the error names the utterance: a corrupt or empty file
found at hour 3 of a 100k-utterance run must say which one it was.
"""
from __future__ import annotations

import io
import shlex
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000
# formats libsndfile decodes itself; the rest (AAC in m4a/mp4, Opus, WebM, ...) go through ffmpeg
SOUNDFILE_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64",
                                ".rf64", ".wave"})
FFMPEG_SUFFIXES = frozenset({".m4a", ".mp4", ".aac", ".opus", ".webm", ".wma", ".mkv", ".mov", ".amr", ".3gp"})
AUDIO_SUFFIXES = SOUNDFILE_SUFFIXES | FFMPEG_SUFFIXES
# a wav.scp pipe: any container ffmpeg reads -> 16 kHz mono wav on stdout (its first audio stream)
FFMPEG_PIPE = "{} -nostdin -loglevel error -i {} -vn -ac 1 -ar 16000 -f wav - |"


class AudioError(ValueError):
    """An utterance's audio cannot be used; the message names the utterance."""


def read_audio(spec: str, utt: str = "", sample_rate: int = SAMPLE_RATE,
               start: float = 0.0, end: float | None = None) -> np.ndarray:
    """Read a wav.scp entry (a path or a ``cmd |`` pipe) as mono float32 at ``sample_rate``.

    ``start``/``end`` (seconds) cut a segment, as Kaldi's ``segments`` file asks.
    """
    name = utt or spec
    try:
        if spec.rstrip().endswith("|"):
            proc = subprocess.run(spec.rstrip()[:-1], shell=True, capture_output=True, check=True)
            wav, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
        else:
            if not Path(spec).is_file():
                raise AudioError(f"{name}: audio file not found: {spec}")
            wav, sr = sf.read(spec, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except subprocess.CalledProcessError as e:
        raise AudioError(f"{name}: pipe command failed ({e.returncode}): {spec}") from None
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, ...
        raise AudioError(f"{name}: unreadable audio {spec}: {e}") from None
    wav = wav.mean(axis=1)  # downmix: average the channels
    if start or end is not None:
        wav = wav[int(start * sr): None if end is None else int(end * sr)]
    if wav.size == 0:
        raise AudioError(f"{name}: empty audio (0 samples) in {spec}")
    if not np.isfinite(wav).all():
        raise AudioError(f"{name}: audio has NaN or inf samples: {spec}")
    if sr != sample_rate:
        wav = soxr.resample(wav, sr, sample_rate).astype(np.float32)
    return wav


def file_spec(path: Path | str, ffmpeg: str = "ffmpeg") -> str:
    """The wav.scp entry that reads ``path``: the path itself when libsndfile decodes its format, else an
    ffmpeg pipe, so a user's m4a goes through :func:`read_audio` like a corpus' mp4 in stage 1."""
    path = Path(path)
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        return str(path)
    return FFMPEG_PIPE.format(shlex.quote(ffmpeg), shlex.quote(str(path)))


def write_wav(path: Path | str, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write 16-bit PCM atomically (temp name, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    sf.write(tmp, np.clip(wav, -1, 1), sample_rate, subtype="PCM_16", format="WAV")
    tmp.replace(path)


def audio_info(spec: str) -> tuple[int, int, int]:
    """(sample_rate, channels, frames) without decoding, for plain files."""
    info = sf.info(spec)
    return info.samplerate, info.channels, info.frames
