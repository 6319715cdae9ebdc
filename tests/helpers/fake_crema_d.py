"""A small fake copy of the CREMA-D repository (shared/corpora.md §5.8): ``AudioWAV/`` and
``processedResults/tabulatedVotes.csv`` with voice-only (1xxxxx), face-only (2xxxxx) and audio-visual
(3xxxxx) rows, a tie, the known-bad ``1076_MTI_SAD_XX`` and a macOS junk file.

``votes``: [(row name, vote counts A D F H N S, CREMA-D id)]; a wav is written for every id.
"""
from __future__ import annotations

from pathlib import Path

from helpers.tones import tone

from local.data.corpora.crema_d import SENTENCES

CODES = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
HEADER = '"","A","D","F","H","N","S","fileName","numResponses","agreement","emoVote"'
# (row name, A D F H N S, file): 1xxxxx voice only, 2xxxxx face only, 3xxxxx both
VOTES = [
    ("100001", (6, 1, 0, 0, 1, 0), "1001_DFA_ANG_XX"), ("200001", (9, 0, 0, 0, 0, 0), "1001_DFA_ANG_XX"),
    ("300001", (8, 0, 0, 0, 1, 0), "1001_DFA_ANG_XX"),
    ("100002", (0, 0, 0, 3, 6, 0), "1001_IEO_HAP_LO"), ("200002", (0, 0, 0, 9, 0, 0), "1001_IEO_HAP_LO"),
    ("100003", (0, 0, 0, 0, 4, 4), "1002_WSI_SAD_XX"),  # a tie: N:S
    ("100004", (0, 0, 0, 0, 5, 5), "1076_MTI_SAD_XX"),
]


def every_actor() -> list:
    """Every actor has one clip (all 91 are named by the folds), a few two; each a voice-only row, some
    face and audio-visual rows too; the known-bad silent 1076_MTI_SAD_XX; one tie."""
    sentences, codes = sorted(SENTENCES), sorted(CODES)
    votes = []
    for n, actor in enumerate(range(1001, 1092)):
        code, sentence = codes[n % 6], sentences[n % 12]
        level = "LO" if sentence == "IEO" and code != "NEU" else "XX"
        counts = [0] * 6
        counts[n % 6], counts[(n + 1) % 6] = 6, 2
        votes.append((f"1{n:05d}", tuple(counts), f"{actor}_{sentence}_{code}_{level}"))
        if n % 10 == 0:
            votes.append((f"2{n:05d}", (1, 1, 1, 1, 1, 1), f"{actor}_{sentence}_{code}_{level}"))
    votes += [("190001", (0, 0, 0, 0, 4, 4), "1001_WSI_SAD_XX"),  # a tie N:S
              ("390001", (0, 0, 0, 0, 8, 0), "1001_WSI_SAD_XX"),
              ("190002", (0, 0, 0, 5, 1, 0), "1050_IEO_HAP_HI"),
              ("190003", (0, 0, 0, 0, 5, 5), "1076_MTI_SAD_XX")]
    return votes


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
