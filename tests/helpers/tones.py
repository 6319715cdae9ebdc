"""The audio of the fake corpora: a sine per file that stage 2 can measure a pitch of."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from local.data.audio import write_wav


def tone(path: Path, k: int, seconds: float, sr: int = 16000) -> None:
    """A sine of ``seconds`` at ``sr``; ``k`` varies its pitch, so that files differ."""
    t = np.arange(int(seconds * sr)) / sr
    write_wav(path, (0.3 * np.sin(2 * np.pi * (110 + 17 * (k % 20)) * t)).astype(np.float32), sr)
