"""The prompts of the four papers, kept as data files beside this module.

Prompts live in ``prompts/*.txt`` rather than in code so that the text a paper
printed can be compared with ours line by line, and so that a user can change
a prompt without touching Python.  Each file starts with ``#`` lines saying
where its text comes from (verbatim, or reconstructed from a description);
the loader drops them.  Placeholders are ``string.Template`` fields
(``${text}``): transcripts and JSON examples may contain braces, which
``str.format`` would choke on.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from string import Template
from typing import Sequence

from local.data.labels import EMOTIONS

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"


@lru_cache(maxsize=None)
def load_prompt(name: str) -> str:
    """The text of ``prompts/<name>.txt`` without its leading ``#`` source lines; a name ending in ``.txt`` is a
    file of its own (a plugin system's prompt beside its module: README, "Adding a system")."""
    path = Path(name) if name.endswith(".txt") else PROMPT_DIR / f"{name}.txt"
    if name.endswith(".txt") and not path.is_file():
        raise FileNotFoundError(f"no prompt file {path}")
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROMPT_DIR.glob("*.txt")))
        raise FileNotFoundError(f"no prompt '{name}' in {PROMPT_DIR} (known: {known})")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "\n".join(lines).strip()


def prompt_fields(name: str) -> set[str]:
    """The placeholder names a prompt needs."""
    return set(Template(load_prompt(name)).get_identifiers())


def render(name: str, **fields: object) -> str:
    """Fill a prompt's placeholders; extra fields are ignored, a missing one is a KeyError naming it."""
    missing = sorted(prompt_fields(name) - fields.keys())
    if missing:
        raise KeyError(f"prompt '{name}' needs field(s) {', '.join(missing)}")
    return Template(load_prompt(name)).substitute({k: str(v) for k, v in fields.items()})


def instruction(name: str, labels: Sequence[str] = EMOTIONS) -> str:
    """What the model is asked: a prompt whose only field is the label list (``${labels}``) gets the recipe's
    set (IEMOCAP's 4 classes, RAVDESS's 8 ...), in its order."""
    return render(name, labels=", ".join(labels))


def with_transcript(instruction: str, text: str) -> str:
    """The text-only cascade's prompt: the transcript stands in for the audio."""
    return f'{instruction}\nTranscript: "{text}"'


@lru_cache(maxsize=None)
def load_questions() -> dict[str, list[str]]:
    """The question pool of AudioLLM-Reasoning: ``{"emotion": [...], "sentiment": [...]}``."""
    with open(PROMPT_DIR / "questions.json", encoding="utf-8") as f:
        pool = json.load(f)
    return {kind: list(questions) for kind, questions in pool.items() if not kind.startswith("_")}
