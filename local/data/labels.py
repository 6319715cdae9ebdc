"""The emotion label set and the maps that harmonise corpus labels onto it.

Every corpus names its classes differently (IEMOCAP ``exc``/``fru``, MELD
``joy``, EmoBox ``label_map.json`` ...).  Stage 1 maps them onto the seven
core labels of C²SER; a label with no mapping is rejected, never guessed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

# The 7 core labels, in the order C²SER's prompts list them.
EMOTIONS = ("anger", "happiness", "neutral", "sadness", "surprise", "disgust", "fear")

# Spellings seen across public corpora; a corpus adds or overrides entries
# with its own map (egs/<corpus>/conf/label_map.json).
DEFAULT_MAP = {
    **{e: e for e in EMOTIONS},
    "ang": "anger", "angry": "anger", "anger": "anger", "mad": "anger",
    "hap": "happiness", "happy": "happiness", "joy": "happiness", "joyful": "happiness",
    "exc": "happiness", "excited": "happiness", "amused": "happiness", "amusement": "happiness",
    "neu": "neutral", "calm": "neutral",
    "sad": "sadness", "sorrow": "sadness",
    "sur": "surprise", "surprised": "surprise",
    "dis": "disgust", "disgusted": "disgust", "contempt": "disgust",
    "fea": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear",
}


def load_label_map(path: str | Path | None) -> dict[str, str]:
    """The default map updated with a corpus map; a value of null drops a label."""
    mapping = dict(DEFAULT_MAP)
    if path:
        with open(path, encoding="utf-8") as f:
            mapping.update(json.load(f))
    return mapping


def harmonise(label: str, mapping: Mapping[str, str | None]) -> str | None:
    """Map a corpus label onto the core set; ``None`` means "reject this utterance"."""
    return mapping.get(label.strip().lower())
