"""Reading a corpus as users have it on disk: junk files, two layouts, text in unknown encodings.

Every corpus circulates in more than one layout (the official archive, a mirror, EmoBox's copy), so
a preparer finds its files by pattern under the root the user gives rather than at fixed paths, and
validates them by name.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

from local.data.kaldi import DataDir

log = logging.getLogger(__name__)

# Tried in order: the released metadata of these corpora is ASCII or UTF-8 except for a few files
# written on Windows (cp1252).  read_lines falls back to latin-1, which decodes any byte.
ENCODINGS = ("utf-8-sig", "cp1252")


class CorpusError(ValueError):
    """The corpus root is not what the preparer expects; says what it looked for and where."""


def is_junk(path: Path) -> bool:
    """macOS resource forks (``._name``) and other hidden files, found inside released archives."""
    return path.name.startswith(".")


def in_sight(path: Path, root: Path) -> bool:
    """Not inside a hidden folder or a macOS archive's ``__MACOSX`` copy (``path`` is under ``root``)."""
    return not any(part.startswith(".") or part == "__MACOSX" for part in path.relative_to(root).parts)


def find(root: Path, pattern: str) -> list[Path]:
    """Files under ``root`` matching the glob ``pattern``, junk left out, sorted."""
    return sorted(p for p in root.glob(pattern) if p.is_file() and not is_junk(p))


def locate(root: Path | str, marker: str, var: str, expected: str, depth: int = 2) -> Path:
    """The folder at or below ``root`` (up to ``depth`` levels) that holds ``marker``, a glob.

    Users point the recipe at the archive's root or at the folder above it; both work.  Nothing
    found is an error naming the variable to set and what belongs inside.
    """
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"{var}={root}: no such directory; set {var} to the folder that holds {expected}")
    level: Iterable[Path] = [root]
    for _ in range(depth + 1):
        for folder in level:
            if any(not is_junk(p) for p in folder.glob(marker)):
                return folder
        level = [d for folder in level for d in sorted(folder.iterdir()) if d.is_dir() and not is_junk(d)]
    where = f"in it or {depth} levels below" if depth else "in it"
    raise CorpusError(f"{var}={root}: found no {marker} {where}; set {var} to the folder that holds {expected}")


def read_lines(path: Path, encodings: Sequence[str] = ENCODINGS) -> list[str]:
    """The lines of a text file, ``\\r`` removed: UTF-16 when it has a byte-order mark or NUL bytes (ESD
    ships some transcripts so), else decoded with the first of ``encodings`` that fits."""
    data = path.read_bytes()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in data:
        text = data.decode("utf-16")
    else:
        for encoding in (*encodings, "latin-1"):
            try:
                text = data.decode(encoding)
                break
            except UnicodeDecodeError:
                continue
    return [line.rstrip("\r") for line in text.split("\n")]


def finish(sets: dict[str, DataDir], root: Path, out_dir: Path | str | None, expected: str) -> dict[str, DataDir]:
    """A preparer's last step: fail when nothing was found (naming what was ``expected``), log each
    set's counts, write the sets under ``out_dir`` when given."""
    if not any(len(data) or data.rejected for data in sets.values()):
        raise ValueError(f"{root}: no utterance found (expected {expected})")
    for name, data in sets.items():
        log.info("%s %s: %d utterances of %d speakers, %d rejected", root, name, len(data),
                 len(set(data.tables.get("utt2spk", {}).values())), len(data.rejected))
        if out_dir is not None:
            data.save(Path(out_dir) / name)
    return sets
