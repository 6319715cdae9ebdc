"""Speed of the pitch backends side by side, in seconds of compute per second of audio.

Not part of CI.  Run from the repo root:
    . ./path.sh && python tests/bench/bench_pitch.py --seconds 30 [--device cuda]
The audio is espeak-ng speech cut into 5 s clips, the length the stage sees
(utterances), so per-call overheads count as they do in a real run.
"""
from __future__ import annotations

import argparse
import io
import subprocess
import time

import numpy as np
import soundfile as sf
import soxr

from local.data.attributes import CrepeTracker, YinTracker

SR = 16000
TEXT = ("When the sunlight strikes raindrops in the air, they act as a prism and form a rainbow. "
        "The rainbow is a division of white light into many beautiful colors. ")


def speech(seconds: float) -> np.ndarray:
    """espeak-ng speech, repeated until it lasts ``seconds``."""
    out = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", TEXT],
                         capture_output=True, check=True).stdout
    wav, sr = sf.read(io.BytesIO(out), dtype="float32")
    wav = soxr.resample(wav, sr, SR).astype(np.float32)
    return np.tile(wav, int(np.ceil(seconds * SR / len(wav))))[: int(seconds * SR)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="audio per backend")
    parser.add_argument("--clip", type=float, default=5.0, help="clip (utterance) length in seconds")
    parser.add_argument("--device", default="cpu", help="torch device of crepe")
    parser.add_argument("--backends", nargs="+", default=["yin", "crepe-tiny", "crepe-full"])
    args = parser.parse_args()

    trackers = {"yin": YinTracker(), "crepe-tiny": CrepeTracker(model="tiny", device=args.device),
                "crepe-full": CrepeTracker(model="full", device=args.device)}
    wav = speech(args.seconds)
    clips = np.array_split(wav, max(1, round(args.seconds / args.clip)))
    print(f"{'backend':<12} {'audio s':>8} {'wall s':>8} {'s/audio s':>10} {'s/audio h':>10} {'voiced':>7}")
    for name in args.backends:
        tracker = trackers[name]
        tracker(clips[0][:SR], SR)  # warm-up: imports, model load, JIT
        start = time.perf_counter()
        voiced = np.concatenate([tracker(clip, SR)[1] for clip in clips])
        wall = time.perf_counter() - start
        per_s = wall / args.seconds
        print(f"{name:<12} {args.seconds:>8.1f} {wall:>8.2f} {per_s:>10.4f} {per_s * 3600:>10.1f} "
              f"{voiced.mean():>7.2f}")


if __name__ == "__main__":
    main()
