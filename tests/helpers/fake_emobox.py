"""A small fake copy of EmoBox's metadata for one dataset (shared/corpora.md §1), with the audio in the
user's downloads: ``data/<ds>/<ds>.jsonl``, ``fold_<k>/<ds>_{train,test,valid}_fold_<k>.jsonl``,
``label_map.json`` and ``data.seg.wrd.stm``; the wavs at ``<downloads>/<wav minus its downloads/<ds>/>``.

``records``: [(key, corpus-native label, wav path relative to the EmoBox folder, speaker)];
``folds``: {k: {"train" | "test" | "valid": [keys]}}.
"""
from __future__ import annotations

import json
from pathlib import Path

from helpers.tones import tone

RAVDESS = [("ravdess-03-01-01-01-01-01-01", "Neutral", "Actor_01/03-01-01-01-01-01-01", "01"),
           ("ravdess-03-01-06-01-01-01-01", "Fearful", "Actor_01/03-01-06-01-01-01-01", "01"),
           ("ravdess-03-01-02-01-01-01-02", "Calm", "Actor_02/03-01-02-01-01-01-02", "02")]
RAVDESS_RECORDS = [(key, emo, f"downloads/ravdess/audio/Audio_Speech_Actors_01-24/{wav}.wav", spk)
                   for key, emo, wav, spk in RAVDESS]
RAVDESS_FOLDS = {1: {"train": [r[0] for r in RAVDESS[:2]], "test": [RAVDESS[2][0]]}}
RAVDESS_LABEL_MAP = {"Neutral": "Neutral", "Calm": "Calm", "Fearful": "Fear"}


def record(dataset: str, key: str, emo: str, wav: str, sr: int, seconds: float) -> str:
    return json.dumps({"key": key, "dataset": dataset, "wav": wav, "type": "raw", "sample_rate": sr,
                       "num_frame": float(int(sr * seconds)), "task": "category", "length": seconds, "emo": emo,
                       "channel": 1})


def build(root: Path, dataset: str = "ravdess", records=RAVDESS_RECORDS, folds=RAVDESS_FOLDS,
          label_map=RAVDESS_LABEL_MAP, downloads: Path | None = None, sr: int = 48000,
          seconds: float = 0.1) -> Path:
    """``EmoBox/data/<dataset>/`` under ``root`` and the audio under ``downloads`` (default: the EmoBox
    folder, where ``downloads/<dataset>/...`` paths point); the EmoBox folder is returned."""
    emobox = root / "EmoBox"
    meta = emobox / "data" / dataset
    meta.mkdir(parents=True)
    lines = {key: record(dataset, key, emo, wav, sr, seconds) for key, emo, wav, _ in records}
    (meta / f"{dataset}.jsonl").write_text("\n".join(lines.values()) + "\n")
    for k, parts in folds.items():
        (meta / f"fold_{k}").mkdir()
        for part, keys in parts.items():
            (meta / f"fold_{k}" / f"{dataset}_{part}_fold_{k}.jsonl").write_text(
                "\n".join(lines[key] for key in keys) + "\n")
    if label_map is not None:
        (meta / "label_map.json").write_text(json.dumps(label_map))
    (meta / "data.seg.wrd.stm").write_text("".join(
        f"{key} 1 {spk} 0.0 {seconds} <id={key},lang=en,spk={spk},emotion={emo}> {emo}\n"
        for key, emo, _, spk in records))
    for k, (_, _, wav, _) in enumerate(records):
        relative = Path(wav)
        path = (downloads / Path(*relative.parts[1:]) if downloads is not None and relative.parts[0] == "downloads"
                else emobox / relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        tone(path, k, seconds, sr)
    return emobox
