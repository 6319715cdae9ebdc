"""A small fake copy of EmoDB's official download (shared/corpora.md §8): ``wav/SSTTTEV.wav``, a macOS junk
file and ``erkennung.txt`` (Latin-1, decimal comma; the preparer does not need it).

``names``: the EmoDB ids (``03a01Fa`` ...) to write a wav for.
"""
from __future__ import annotations

from pathlib import Path

from helpers.tones import tone

NAMES = ("03a01Fa", "08b01Lb", "16a01Ec")


def build(root: Path, names=NAMES, seconds: float = 0.1) -> Path:
    """``emodb/`` under ``root``, returned."""
    base = root / "emodb"
    (base / "wav").mkdir(parents=True)
    for k, name in enumerate(names):
        tone(base / "wav" / f"{name}.wav", k, seconds)
    (base / "wav" / f"._{names[0]}.wav").write_bytes(b"junk")
    (base / "erkennung.txt").write_bytes(("Satz erkannt\n" + "".join(f"{n}.wav 90,0\n" for n in names))
                                         .encode("latin-1"))
    return base
