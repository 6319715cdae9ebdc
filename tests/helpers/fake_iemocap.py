"""A small fake copy of IEMOCAP_full_release, with the traps of shared/corpora.md §2.8.

``sessions``: {session number: {dialog: [(IEMOCAP id, consensus code, [(rater, categories)], transcript)]}}.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from local.data.audio import write_wav


# dialog -> [(IEMOCAP id, consensus code, C- lines (rater, categories), transcript)]
SESSIONS = {
    1: {
        "Ses01F_impro01": [
            ("Ses01F_impro01_F000", "neu", [("E2", "Neutral;"), ("E3", "Neutral;"), ("F1", "Anger;")], "Excuse me."),
            ("Ses01F_impro01_M000", "xxx", [("E1", "Frustration; Anger;"), ("E2", "Neutral;")],
             "Do you have your forms? [LAUGHTER]"),
        ],
        "Ses01F_script01_1": [
            ("Ses01F_script01_1_M001", "exc", [("E1", "Excited;"), ("E3", "Excited; Happiness;")], "What a day."),
        ],
        "Ses01M_impro05a": [  # a-suffixed dialog of the male actor; this turn is the female actor's
            ("Ses01M_impro05a_F002", "hap", [("E1", "Happiness;"), ("E2", "Other; Surprise;")], "Oh really!"),
        ],
    },
    5: {
        "Ses05F_script02_2": [
            ("Ses05F_script02_2_M046", "sad", [("E1", "Sadness;"), ("E4", "Sadness;"), ("M1", "Neutral;")], "Never mind."),
            ("Ses05F_script02_2_F010", "ang", [("E1", "Anger;"), ("E2", "Anger; Frustration;")], "Stop it."),
        ],
    },
}


def five_sessions() -> dict:
    """:data:`SESSIONS` and sessions 2-4 with one dialog of both actors each: enough for every fold."""
    more = {n: {f"Ses0{n}F_impro02": [
        (f"Ses0{n}F_impro02_F000", "ang", [("E1", "Anger;"), ("E2", "Anger;")], "Leave me alone."),
        (f"Ses0{n}F_impro02_M000", "fru", [("E1", "Frustration;"), ("E2", "Anger; Frustration;")], "Not again."),
        (f"Ses0{n}F_impro02_M001", "neu", [("E1", "Neutral;"), ("E3", "Neutral;")], "Okay then."),
    ]} for n in (2, 3, 4)}
    return {**SESSIONS, **more}


def evaluation(turns) -> str:
    lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    for i, (ident, code, ratings, _) in enumerate(turns):
        lines.append(f"[{i + 1.0:.4f} - {i + 1.5:.4f}]\t{ident}\t{code}\t[2.5000, 3.0000, 2.0000]")
        lines += [f"C-{rater}:\t{cats}\t(a comment; with a semicolon)" for rater, cats in ratings]
        lines += ["A-E3:\tval 3; act 2; dom  2;\t()", ""]
    return "\n".join(lines)


def build(root: Path, sessions: dict) -> Path:
    """IEMOCAP_full_release/ under ``root``, as released, with junk, an XX turn, CRLF and cp1252 text."""
    release = root / "IEMOCAP_full_release"
    for number, dialogs in sessions.items():
        session = release / f"Session{number}"
        for dialog, turns in dialogs.items():
            ev = session / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
            ev.parent.mkdir(parents=True, exist_ok=True)
            newline = "\r\n" if dialog == "Ses01F_impro01" else "\n"
            ev.write_bytes(evaluation(turns).replace("\n", newline).encode("ascii"))
            tr = session / "dialog" / "transcriptions" / f"{dialog}.txt"
            tr.parent.mkdir(parents=True, exist_ok=True)
            lines = [f"{ident} [{i + 1.0:08.4f}-{i + 1.5:08.4f}]: {text}" for i, (ident, _, _, text) in enumerate(turns)]
            lines.insert(1, f"{dialog}_MXX0 [009.0000-010.0000]: Mm-hmm.")  # a turn with no audio, no label
            lines.append("this line is not a turn")
            tr.write_bytes(("\n".join(lines) + "\n").encode("cp1252"))
            (session / "sentences" / "wav" / dialog).mkdir(parents=True, exist_ok=True)
            for k, (ident, *_) in enumerate(turns):  # 1 s tones: above stage 1's min_dur, with a pitch to measure
                t = np.arange(16000) / 16000
                tone = 0.3 * np.sin(2 * np.pi * (110 + 30 * k + 5 * number) * t).astype(np.float32)
                write_wav(session / "sentences" / "wav" / dialog / f"{ident}.wav", tone)
        categorical = session / "dialog" / "EmoEvaluation" / "Categorical"
        categorical.mkdir(exist_ok=True)
        (categorical / "x_e1_cat.txt").write_text("Ses01F_impro01_F000 :Neutral state; ()\n")
    junk = release / "Session1" / "dialog" / "EmoEvaluation" / "._Ses01F_impro01.txt"
    junk.write_bytes(b"\x00\x05\x16\x07 resource fork")
    (release / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "._Ses01F_impro01_F000.wav").write_bytes(b"junk")
    return release
