"""A small fake copy of the CREMA-D repository (shared/corpora.md §5.8): ``AudioWAV/`` and
``processedResults/tabulatedVotes.csv`` with voice-only (1xxxxx), face-only (2xxxxx) and audio-visual
(3xxxxx) rows, a tie, the known-bad ``1076_MTI_SAD_XX`` and a macOS junk file.

``votes``: [(row name, vote counts A D F H N S, CREMA-D id)]; a wav is written for every id.
"""
from __future__ import annotations

from pathlib import Path

from helpers.tones import tone

HEADER = '"","A","D","F","H","N","S","fileName","numResponses","agreement","emoVote"'
# (row name, A D F H N S, file): 1xxxxx voice only, 2xxxxx face only, 3xxxxx both
VOTES = [
    ("100001", (6, 1, 0, 0, 1, 0), "1001_DFA_ANG_XX"), ("200001", (9, 0, 0, 0, 0, 0), "1001_DFA_ANG_XX"),
    ("300001", (8, 0, 0, 0, 1, 0), "1001_DFA_ANG_XX"),
    ("100002", (0, 0, 0, 3, 6, 0), "1001_IEO_HAP_LO"), ("200002", (0, 0, 0, 9, 0, 0), "1001_IEO_HAP_LO"),
    ("100003", (0, 0, 0, 0, 4, 4), "1002_WSI_SAD_XX"),  # a tie: N:S
    ("100004", (0, 0, 0, 0, 5, 5), "1076_MTI_SAD_XX"),
]


def build(root: Path, votes=VOTES, seconds: float = 0.1) -> Path:
    """``CREMA-D/`` under ``root``, returned."""
    base = root / "CREMA-D"
    (base / "AudioWAV").mkdir(parents=True)
    for k, name in enumerate(dict.fromkeys(name for *_, name in votes)):
        tone(base / "AudioWAV" / f"{name}.wav", k, seconds)
    (base / "AudioWAV" / f"._{votes[0][2]}.wav").write_bytes(b"junk")
    (base / "processedResults").mkdir()
    lines = [HEADER] + [f'"{row}",{",".join(map(str, c))},"{name}",{sum(c)},0.5,"N"' for row, c, name in votes]
    (base / "processedResults" / "tabulatedVotes.csv").write_text("\n".join(lines) + "\n")
    return base
