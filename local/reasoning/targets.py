"""Stage 3: reasoning targets of a data dir, asked of a teacher and checked before use.

A teacher, LLM or not, can answer in the wrong format or argue for the wrong
emotion; training on such a target teaches the model to do the same.  So every
answer passes a check made for its type (names the gold label, EIPS tags
parse, the distribution's arg-max is the gold majority ...) and what fails
goes to ``targets.rejected`` with its reason instead of ``targets.jsonl``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from local.data.kaldi import DataDir, DataDirError, parse_dist, parse_kv
from local.reasoning.prompts import prompt_fields, render
from local.reasoning.teacher import Request, Teacher

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TargetType:
    """Everything stages 3 and 10 know of one target type; :data:`TARGET_TYPES` holds one per type,
    so a new type is one entry there (and, for the offline teacher, one method on it)."""
    teacher_prompt: str          # prompts/<name>.txt the teacher reads
    instruction: str             # what the audio LLM reads: prompts/<name>.txt, or the questions.json pool
    tables: tuple[str, ...]      # data-dir tables it needs besides text and utt2emo
    # The format validator (text, transcript or None) -> problem or None: needs no gold label, so
    # stage 10 asks it of a model's outputs (see format_problem).  Called with non-blank text.
    check: Callable[[str, str | None], str | None]
    offline: str                 # the OfflineTeacher method that writes it
    names_label: bool = False    # the answer must name the gold label (checked before the format)
    # A further check against the gold (after the format passed): request, answer -> problem or None.
    check_gold: Callable[[Request, str], str | None] | None = None
    keeps_dist: bool = False     # its targets.jsonl record carries the request's soft label ("dist")


# Words that count as naming a label: a teacher writes "angry" as often as "anger".
LABEL_FORMS = {
    "anger": ("anger", "angry", "生气", "愤怒"),
    "happiness": ("happiness", "happy", "joy", "开心", "高兴", "快乐"),
    "neutral": ("neutral", "中性", "平静"),
    "sadness": ("sadness", "sad", "sorrow", "悲伤", "难过", "伤心"),
    "surprise": ("surprise", "surprised", "惊讶", "吃惊"),
    "disgust": ("disgust", "disgusted", "厌恶", "恶心"),
    "fear": ("fear", "fearful", "afraid", "scared", "害怕", "恐惧"),
    # classes of recipes beyond the core 7 (RAVDESS, MSP-Podcast, EmoDB); any other label is its own only form
    "calm": ("calm", "calmness"),
    "contempt": ("contempt", "contemptuous", "轻蔑"),
    "boredom": ("boredom", "bored", "无聊"),
}

EIPS_FORMAT = re.compile(r"\s*<thought>(?P<thought>.*?)</thought>\s*<response>(?P<response>.*?)</response>\s*",
                         re.DOTALL)
EIPS_STEPS = {"Emotion perception": r"emotion perception", "Intent": r"intent",
              "Psychological modelling": r"psychological model(?:l)?ing", "Strategy": r"strategy"}
AMBIGUITY_STEPS = ("Step 1", "Step 2", "Step 3")
QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”')
DIST_ITEM = re.compile(r"([A-Za-z_]+)\s*[:=]\s*([0-9]*\.?[0-9]+)")


def format_dist_line(dist: dict[str, float]) -> str:
    """``anger:0.60 sadness:0.40``: most likely first, two decimals, as the teachers are asked to write it."""
    return " ".join(f"{l}:{p:.2f}" for l, p in sorted(dist.items(), key=lambda kv: (-kv[1], kv[0])) if p > 0)


# --- requests -----------------------------------------------------------------------

# Tables a corpus may not have (a stage makes the others): a type that needs one is left out without it.
CORPUS_OPTIONAL = ("utt2dist",)


def check_tables(data: DataDir, path: Path, types: Iterable[str]) -> list[str]:
    """The requested types this data dir can have, before asking anything.  A table a type needs that a
    stage makes (utt2attr: stage 2) is an error when missing; a type that needs soft labels
    (ambiguity_cot) is left out of a corpus without them (MELD, ESD: one label per utterance), saying so:
    a system that trains on it then finds no such targets in stage 6."""
    usable = []
    for t in types:
        tables = target_spec(t).tables
        for table in ("text", "utt2emo", *tables):
            if table not in data and table not in CORPUS_OPTIONAL:
                raise DataDirError(path / table, None, f"is missing; target type '{t}' needs it")
        missing = [table for table in tables if table not in data]
        if missing:
            log.warning("%s: no %s, so no %s targets", path, " or ".join(missing), t)
        else:
            usable.append(t)
    return usable


# Stage 2's level of an attribute it could not measure (local.data.attributes.UNKNOWN; not imported,
# that module pulls in torch).  Only test sets keep such utterances.
UNMEASURED = "unknown"


def build_requests(data: DataDir, types: Sequence[str], default_lang: str = "en",
                   ) -> tuple[list[Request], list[tuple[str, str, str]]]:
    """One request per (utterance, type), and the (utt, type, reason) of those that cannot be asked.

    A type whose prompt states a level that stage 2 could not measure is not
    asked: a teacher told the pitch is "unknown" would invent one, and the
    target would teach the model a claim nobody measured.  Other types of the
    same utterance are still asked.
    """
    requests, rejected = [], []
    for utt in data.utts:
        text, label = data["text"].get(utt, "").strip(), data["utt2emo"].get(utt)
        if not label:
            rejected += [(utt, t, "no label in utt2emo") for t in types]
            continue
        lang = (data.get("utt2lang") or {}).get(utt, default_lang)
        try:
            attrs = parse_kv(data["utt2attr"][utt]) if "utt2attr" in data else {}
            dist = parse_dist(data["utt2dist"][utt]) if "utt2dist" in data else None
        except ValueError as e:
            rejected += [(utt, t, f"bad utt2attr/utt2dist value: {e}") for t in types]
            continue
        fields = {"text": text, "label": label, "task": "emotion"}
        # prompt field -> (utt2attr key, level)
        energy = "loudness" if "loudness" in attrs else "energy"
        levels = {"rate": ("rate", attrs.get("rate")), "pitch": ("pitch", attrs.get("pitch")),
                  "energy": (energy, attrs.get(energy))}
        fields.update({k: v.lower() for k, (_, v) in levels.items() if v and v != UNMEASURED})
        unmeasured = {k: key for k, (key, v) in levels.items() if v == UNMEASURED}
        if dist:
            fields["dist"] = format_dist_line(dist)
        for t in types:
            if not text:
                rejected.append((utt, t, "empty transcript"))
                continue
            needs = prompt_fields(TARGET_TYPES[t].teacher_prompt)
            needed = sorted(key for k, key in unmeasured.items() if k in needs)
            if needed:
                rejected.append((utt, t, f"attributes not measurable: {', '.join(needed)}"))
                continue
            try:
                prompt = render(TARGET_TYPES[t].teacher_prompt, **fields)
            except KeyError as e:
                rejected.append((utt, t, f"missing input for the prompt: {e.args[0]} (see utt2attr/utt2dist)"))
                continue
            requests.append(Request(key=f"{utt} {t}", type=t, prompt=prompt, utt=utt, label=label,
                                    text=text, attrs=attrs, dist=dist, lang=lang))
    return requests, rejected


# --- validation -----------------------------------------------------------------------

def names_label(answer: str, label: str) -> bool:
    """Whether the answer names ``label`` (or one of its word forms)."""
    for form in LABEL_FORMS.get(label, (label,)):
        if form.isascii():
            if re.search(rf"\b{re.escape(form)}\b", answer, re.IGNORECASE):
                return True
        elif form in answer:
            return True
    return False


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def quotes_transcript(answer: str, text: str) -> bool:
    """Whether some double-quoted span of the answer is words of the transcript."""
    transcript = _normalise(text)
    for match in QUOTED.finditer(answer):
        span = _normalise(match.group(1) or match.group(2))
        if span and span in transcript:
            return True
    return False


def parse_distribution_line(answer: str) -> dict[str, float]:
    """The last ``Distribution: a:p b:q`` line of an answer; ValueError when absent or malformed."""
    lines = [l for l in answer.splitlines() if l.strip().lower().startswith("distribution:")]
    if not lines:
        raise ValueError("no 'Distribution:' line")
    # LLMs also write "anger: 0.6, sadness: 0.4"; accept any such spacing and separators.
    dist = {label.lower(): float(p) for label, p in DIST_ITEM.findall(lines[-1].split(":", 1)[1])}
    if not dist:
        raise ValueError("no label:probability on the 'Distribution:' line")
    if any(not 0 <= p <= 1 for p in dist.values()) or abs(sum(dist.values()) - 1) > 0.05:
        raise ValueError(f"'Distribution:' probabilities do not sum to 1 ({sum(dist.values()):.2f})")
    return dist


def _argmax(dist: dict[str, float]) -> set[str]:
    top = max(dist.values())
    return {l for l, p in dist.items() if p >= top - 1e-9}


# What C²SER's explicit CoT must describe (Table I: "Ensure including all speech features"), by the
# nouns (or, for volume, also the adjectives) a description of each uses.
SPEECH_FEATURES = {
    "rate": r"\b(?:pace|rate|speed|tempo)\b|语速",
    "pitch": r"\b(?:pitch|pitched|tone)\b|音调|音高|语调",
    "volume": r"\b(?:volume|loudness|loud|quiet|soft|energy|level)\b|音量|响度",
}
# The implicit teacher is asked for fewer than ten words; twice that leaves room for an LLM's
# phrasing, while an output that goes on to describe the speech is no longer implicit.
IMPLICIT_MAX_WORDS = 20


# --- the format of each type (TargetType.check) and its checks against the gold (TargetType.check_gold) ---

def _label_problem(text: str) -> str | None:
    return None if any(names_label(text, label) for label in LABEL_FORMS) else "names no emotion label"


def check_c2ser_explicit(text: str, transcript: str | None = None) -> str | None:
    problem = _label_problem(text)
    if problem:
        return problem
    missing = [name for name, pattern in SPEECH_FEATURES.items() if not re.search(pattern, text, re.IGNORECASE)]
    if missing:
        return f"does not describe the speech's {', '.join(missing)}"
    return None


def check_c2ser_implicit(text: str, transcript: str | None = None) -> str | None:
    problem = _label_problem(text)
    if problem:
        return problem
    if len(text.split()) > IMPLICIT_MAX_WORDS:
        return f"{len(text.split())} words: not a short description in terms of the label"
    return None


def check_eips(text: str, transcript: str | None = None) -> str | None:
    match = EIPS_FORMAT.fullmatch(text)
    if not match:
        return "not <thought>...</thought><response>...</response>"
    missing = [step for step, pattern in EIPS_STEPS.items()
               if not re.search(pattern, match["thought"], re.IGNORECASE)]
    if missing:
        return f"thought lacks the EIPS step(s) {', '.join(missing)}"
    return None if match["response"].strip() else "empty response"


def check_eips_gold(request: Request, answer: str) -> str | None:
    if not names_label(EIPS_FORMAT.fullmatch(answer)["thought"], request.label):
        return f"thought does not name the gold label '{request.label}'"
    return None


def check_direct_response(text: str, transcript: str | None = None) -> str | None:
    return "contains <thought>/<response> tags" if re.search(r"</?(thought|response)>", text) else None


def check_ambiguity_cot(text: str, transcript: str | None = None) -> str | None:
    missing = [s for s in AMBIGUITY_STEPS if s.lower() not in text.lower()]
    if missing:
        return f"lacks {', '.join(missing)}"
    try:
        parse_distribution_line(text)
    except ValueError as e:
        return f"bad distribution: {e}"
    return None


def check_ambiguity_cot_gold(request: Request, answer: str) -> str | None:
    if request.dist:
        predicted = parse_distribution_line(answer)
        if not _argmax(predicted) & _argmax(request.dist):
            return (f"distribution arg-max {'/'.join(sorted(_argmax(predicted)))} is not the gold majority "
                    f"{'/'.join(sorted(_argmax(request.dist)))}")
    return None


def check_summarize(text: str, transcript: str | None = None) -> str | None:
    return _label_problem(text)


def check_elaborate(text: str, transcript: str | None = None) -> str | None:
    problem = _label_problem(text)
    if problem:
        return problem
    if transcript and not quotes_transcript(text, transcript):
        return "quotes no words of the transcript"
    if not transcript and not QUOTED.search(text):
        return "quotes nothing"
    return None


# --- the registry: one entry per target type ----------------------------------------------------------

TARGET_TYPES: dict[str, TargetType] = {
    # C²SER Stage 1: rate / pitch / volume levels + transcript -> emotion.
    "c2ser_explicit": TargetType(teacher_prompt="c2ser_explicit_teacher", instruction="c2ser_explicit_instruction",
                                 tables=("utt2attr",), check=check_c2ser_explicit, offline="c2ser_explicit",
                                 names_label=True),
    # C²SER Stage 2: a description in terms of the label only.
    "c2ser_implicit": TargetType(teacher_prompt="c2ser_implicit_teacher", instruction="c2ser_implicit_instruction",
                                 tables=(), check=check_c2ser_implicit, offline="c2ser_implicit", names_label=True),
    # CogAudio Stage I: EIPS <thought> + <response>; Stage II: the response alone.
    "eips": TargetType(teacher_prompt="eips_teacher", instruction="cogaudio_prompt_a", tables=(),
                       check=check_eips, check_gold=check_eips_gold, offline="eips"),
    "direct_response": TargetType(teacher_prompt="direct_response_teacher", instruction="cogaudio_prompt_b",
                                  tables=(), check=check_direct_response, offline="direct_response"),
    # Ambiguity reasoning: Table 1 steps ending in the soft label.
    "ambiguity_cot": TargetType(teacher_prompt="ambiguity_teacher", instruction="ambiguity_instruction",
                                tables=("utt2dist", "utt2attr"), check=check_ambiguity_cot,
                                check_gold=check_ambiguity_cot_gold, keeps_dist=True, offline="ambiguity_cot"),
    # AudioLLM-Reasoning: interpretive and evidence-grounded explanations (question pool instructions).
    "summarize": TargetType(teacher_prompt="reasoning_summarize", instruction="questions", tables=(),
                            check=check_summarize, offline="summarize", names_label=True),
    "elaborate": TargetType(teacher_prompt="reasoning_elaborate", instruction="questions", tables=(),
                            check=check_elaborate, offline="elaborate", names_label=True),
}


def target_spec(target_type: str) -> TargetType:
    """The registry entry of ``target_type``, or the error every stage gives for an unknown one."""
    if target_type not in TARGET_TYPES:
        raise ValueError(f"unknown target type '{target_type}' (known: {', '.join(TARGET_TYPES)})")
    return TARGET_TYPES[target_type]


def format_problem(target_type: str, text: str | None, transcript: str | None = None) -> str | None:
    """Why ``text`` is not in the format of ``target_type``, or None when it is.

    It needs no gold label, so stage 10 asks it of a model's outputs exactly as
    stage 3 asks it (through :func:`check_target`) of a teacher's answers: a
    model trained on a format should write it.  ``transcript``, when known,
    is what an ``elaborate`` output must quote; without it any quotation counts.
    """
    spec = target_spec(target_type)
    if text is None or not text.strip():
        return "empty output"
    return spec.check(text, transcript)


def check_target(request: Request, answer: str | None) -> str | None:
    """Why a teacher answer is not a usable target, or None when it is: its format
    (:func:`format_problem`), then whether it argues for the gold label."""
    if answer is None or not answer.strip():
        return "teacher gave no answer"
    spec = target_spec(request.type)
    # Naming the wrong label is the more telling reason, so it comes before the format's.
    if spec.names_label and not names_label(answer, request.label):
        return f"does not name the gold label '{request.label}'"
    problem = format_problem(request.type, answer, request.text)
    if problem:
        return problem
    return spec.check_gold(request, answer) if spec.check_gold else None


# --- the stage ----------------------------------------------------------------------------

def _write_atomic(path: Path, lines: Iterable[str]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_targets(data_dir: Path | str, teacher: Teacher, types: Sequence[str],
                 default_lang: str = "en") -> dict[str, int]:
    """Write ``targets.jsonl`` (and ``targets.rejected``) of one data dir; returns counts."""
    path = Path(data_dir)
    data = DataDir.load(path)
    types = check_tables(data, path, list(dict.fromkeys(types)))
    requests, rejected = build_requests(data, types, default_lang)
    answers = teacher.generate(requests)
    if len(answers) != len(requests):
        raise RuntimeError(f"{teacher.name} returned {len(answers)} answers for {len(requests)} requests")
    if requests and all(a is None for a in answers):
        # An unreachable endpoint or a broken model: empty targets must not pass for a finished stage.
        raise RuntimeError(f"{path}: teacher {teacher.name} answered none of {len(requests)} requests "
                           "(see the log above); nothing written")

    records = []
    for request, answer in zip(requests, answers):
        reason = check_target(request, answer)
        if reason:
            rejected.append((request.utt, request.type, reason))
            continue
        record = {"utt": request.utt, "type": request.type, "target": answer.strip(),
                  "label": request.label, "teacher": teacher.name}
        if TARGET_TYPES[request.type].keeps_dist:
            record["dist"] = request.dist
        records.append(record)
    for utt, t, reason in rejected:
        log.warning("%s: rejected %s target of %s: %s", path, t, utt, reason)

    records.sort(key=lambda r: (r["utt"], r["type"]))
    _write_atomic(path / "targets.jsonl", (json.dumps(r, ensure_ascii=False) for r in records))
    if rejected:
        _write_atomic(path / "targets.rejected",
                      (f"{utt} {t} {' '.join(reason.split())}" for utt, t, reason in sorted(rejected)))
    else:
        (path / "targets.rejected").unlink(missing_ok=True)
    return {"written": len(records), "rejected": len(rejected)}
