"""Label sets and the maps that harmonise corpus labels onto them.

Every corpus names its classes differently (IEMOCAP ``exc``/``fru``, MELD
``joy``, EmoBox ``label_map.json`` ...), and every paper scores its own set
(IEMOCAP's 4 classes, RAVDESS's 8 with calm, C²SER's 7).  Stage 1 maps a
corpus' labels onto the recipe's set (:class:`LabelSet`); a label with no
mapping is rejected, never guessed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
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


def in_core_order(present: set[str]) -> list[str]:
    """Labels in the order of the core list (C²SER's prompts), any others after them, sorted."""
    return [e for e in EMOTIONS if e in present] + sorted(present - set(EMOTIONS))


def recipe_labels(corpus: Mapping) -> list[str]:
    """The classes of a recipe (``corpus.labels``; C²SER's 7 by default): what its models answer in."""
    return list(corpus.get("labels") or EMOTIONS)


def load_label_map(spec: str | Path | Mapping[str, str | None] | None) -> dict[str, str | None]:
    """The default map updated with a corpus map: a JSON file or a mapping (from the corpus yaml);
    a value of null drops a label."""
    mapping: dict[str, str | None] = dict(DEFAULT_MAP)
    if isinstance(spec, Mapping):
        mapping.update({str(k).lower(): v for k, v in spec.items()})
    elif spec:
        with open(spec, encoding="utf-8") as f:
            mapping.update({str(k).lower(): v for k, v in json.load(f).items()})
    return mapping


@dataclass(frozen=True)
class LabelSet:
    """A recipe's classes (``corpus.labels``) and the map from a corpus' spellings onto them.

    A name of the set stands for itself even where the default map would merge it (RAVDESS keeps
    ``calm``, MSP-Podcast ``contempt``); any other name goes through the map.  A name the map sends
    to null or outside the set is *dropped*: its utterance is rejected when it is the hard label,
    its share of a soft label is taken out.  A name the map does not know is *unknown*: a typo or
    a class nobody decided on, which rejects the utterance either way.
    """

    labels: tuple[str, ...] = EMOTIONS
    mapping: Mapping[str, str | None] = field(default_factory=lambda: dict(DEFAULT_MAP))

    def __post_init__(self):
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"corpus.labels must be distinct names, got {list(self.labels)}")

    @classmethod
    def from_config(cls, corpus: Mapping) -> "LabelSet":
        return cls(tuple(recipe_labels(corpus)), load_label_map(corpus.get("label_map")))

    def lookup(self, label: str) -> str | None:
        """The label of the set that ``label`` stands for; None when it is dropped or unknown."""
        key = label.strip().lower()
        target = key if key in self.labels else self.mapping.get(key)
        return target if target in self.labels else None

    def extended(self) -> "LabelSet":
        """This set plus every name the map leads to (the core labels among them): what a test set keeps."""
        names = {v for v in self.mapping.values() if v is not None}
        return LabelSet(self.labels + tuple(in_core_order(names - set(self.labels))), self.mapping)

    def unknown(self, label: str) -> bool:
        key = label.strip().lower()
        return key not in self.labels and key not in self.mapping

    def why_not(self, label: str) -> str:
        """Why ``label`` has no label of the set, for a rejected file."""
        key = label.strip().lower()
        if self.unknown(label):
            return f"unknown label '{label}' (map it in corpus.label_map)"
        if self.mapping.get(key) is None:
            return f"label '{label}' is dropped by corpus.label_map"
        return f"label '{label}' ({self.mapping[key]}) is not in corpus.labels [{', '.join(self.labels)}]"
