"""A small fake copy of an MSP-Podcast release (shared/corpora.md §3.9): 1.12's layout (CSV labels with CRLF,
``Audios/``, ``Transcripts/``) or an older one (JSON labels, ``Audio/``, ``label/labels_concensus.json``,
``Validation``).

``rows``: [(FileName, EmoClass, SpkrID, Split_Set)]; ``workers``: {FileName: primary classes of its annotators}.
"""
from __future__ import annotations

import json
from pathlib import Path

from helpers.tones import tone

ROWS = [  # FileName, EmoClass, SpkrID, Split_Set
    ("MSP-PODCAST_0001_0008.wav", "N", "127", "Train"), ("MSP-PODCAST_0001_0009.wav", "A", "127", "Train"),
    ("MSP-PODCAST_0002_0033.wav", "X", "Unknown", "Development"), ("MSP-PODCAST_0003_0001.wav", "C", "45", "Test1"),
    ("MSP-PODCAST_0004_0001.wav", "O", "46", "Test2"), ("MSP-PODCAST_test3_0001.wav", "", "Unknown", "Test3"),
]
WORKERS = {  # file -> primary classes of its annotators
    "MSP-PODCAST_0001_0008.wav": ["Neutral", "Neutral", "Sad"], "MSP-PODCAST_0001_0009.wav": ["Angry", "Angry"],
    "MSP-PODCAST_0002_0033.wav": ["Happy", "Other-confused", "Neutral", "Contempt"],
    "MSP-PODCAST_0003_0001.wav": ["Contempt", "Disgust"], "MSP-PODCAST_0004_0001.wav": ["Other-bored"],
}


def transcript(name: str) -> str:
    return f"words of {name[:-4]}"


def audio_and_transcripts(base: Path, rows=ROWS, audio: str = "Audios", seconds: float = 0.1) -> None:
    (base / audio).mkdir(parents=True)
    (base / "Transcripts").mkdir()
    for k, (name, *_) in enumerate(rows):
        tone(base / audio / name, k, seconds)
        (base / "Transcripts" / name.replace(".wav", ".txt")).write_text(transcript(name) + "\n")


def build(root: Path, rows=ROWS, workers=WORKERS, seconds: float = 0.1) -> Path:
    """``MSP-PODCAST-1.12/`` under ``root`` (labels_consensus.csv with CRLF, labels_detailed.csv), returned."""
    base = root / "MSP-PODCAST-1.12"
    audio_and_transcripts(base, rows, seconds=seconds)
    (base / "Labels").mkdir()
    lines = ["FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set"]
    lines += [f"{f},{c},2.2,4.0,2.6,{s},Female,{p}" for f, c, s, p in rows]
    (base / "Labels" / "labels_consensus.csv").write_bytes("\r\n".join(lines).encode() + b"\r\n")
    detail = ["FileName,EmoDetail"] + [f'{f},"WORKER{i:08d}; {m}; Concerned,Amused; A:2.0; V:4.0; D:3.0;"'
                                       for f, majors in workers.items() for i, m in enumerate(majors)]
    (base / "Labels" / "labels_detailed.csv").write_text("\n".join(detail) + "\n")
    return base


def build_old(root: Path, rows=ROWS[:3], workers=WORKERS, seconds: float = 0.1) -> Path:
    """An older release under ``root/old``: ``Audio/``, ``label/labels_concensus.json`` (misspelt),
    ``labels_detailed.json``, ``Validation`` for the dev split."""
    base = root / "old"
    audio_and_transcripts(base, rows, audio="Audio", seconds=seconds)
    (base / "label").mkdir()
    consensus = {f: {"EmoClass": c, "EmoAct": 2.2, "EmoVal": 4.0, "EmoDom": 2.6, "SpkrID": s, "Gender": "Male",
                     "Split_Set": "Validation" if p == "Development" else p} for f, c, s, p in rows}
    (base / "label" / "labels_concensus.json").write_text(json.dumps(consensus))
    detail = {f: {f"W{i}": {"EmoClass_Major": m, "EmoAct": 2.0} for i, m in enumerate(workers[f])}
              for f in consensus}
    (base / "label" / "labels_detailed.json").write_text(json.dumps(detail))
    return base
