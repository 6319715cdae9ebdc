"""A small fake copy of ESD (shared/corpora.md §7): speakers in the release layout
(``<spk>/<Emotion>/<split>/<id>.wav``) or the flat one (``<spk>/<Emotion>/<id>.wav``), each with its
``<spk>.txt`` in the encoding the release uses for that speaker (gb2312, UTF-16 with CRLF, ...), and
optionally a line with spaces for tabs and a macOS junk file.

``speakers``: {speaker: {index: (transcript, emotion as written in the file)}}.
"""
from __future__ import annotations

from pathlib import Path

from helpers.tones import tone

ZH = {1: ("打开窗户。", "中立"), 21: ("今天天气很好。", "中立"), 51: ("我们走吧。", "中立"), 351: ("别说了。", "生气")}
EN = {1: ("The nine the eggs.", "Neutral"), 21: ("I know you do.", "Neutral"), 1451: ("Really, now?", "Surprise")}
EMOTIONS = ("Neutral", "Angry", "Happy", "Sad", "Surprise")  # the blocks of 350 indices


def emotion_folder(index: int) -> str:
    return EMOTIONS[(index - 1) // 350]


def split_folder(index: int) -> str:
    offset = (index - 1) % 350 + 1
    return "evaluation" if offset <= 20 else "test" if offset <= 50 else "train"


def write_speaker(base: Path, speaker: str, lines: dict, *, layout: str, encoding: str, newline: str = "\n",
                  spaces_for_tabs: tuple[int, ...] = (), seconds: float = 0.1) -> None:
    """One speaker folder: the wavs in ``layout`` ("release" or "flat") and ``<spk>.txt`` in ``encoding``;
    the lines at the positions ``spaces_for_tabs`` separate their fields with spaces."""
    for k, index in enumerate(lines):
        folder = base / speaker / emotion_folder(index)
        if layout == "release":
            folder = folder / split_folder(index)
        folder.mkdir(parents=True, exist_ok=True)
        tone(folder / f"{speaker}_{index:06d}.wav", k + int(speaker), seconds)
    text = [f"{speaker}_{i:06d}\t{t}\t{e}" for i, (t, e) in lines.items()]
    for n in spaces_for_tabs:
        text[n] = text[n].replace("\t", " ")
    (base / speaker / f"{speaker}.txt").write_bytes((newline.join(text) + newline).encode(encoding))


def build(root: Path, seconds: float = 0.1) -> Path:
    """``root/Emotion Speech Dataset/``: 0001 in the release layout (gb2312), 0012 flat (UTF-16, CRLF, one
    line with spaces for tabs) with a junk file; ``root`` is returned (the folder above works)."""
    base = root / "Emotion Speech Dataset"
    write_speaker(base, "0001", ZH, layout="release", encoding="gb2312", seconds=seconds)
    write_speaker(base, "0012", EN, layout="flat", encoding="utf-16", newline="\r\n", spaces_for_tabs=(1,),
                  seconds=seconds)
    (base / "0012" / "Neutral" / "._0012_000001.wav").write_bytes(b"junk")
    return root
