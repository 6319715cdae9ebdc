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
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from local.data.kaldi import DataDir, DataDirError, parse_dist, parse_kv
from local.reasoning.checks import (check_ambiguity_cot, check_ambiguity_cot_gold, check_c2ser_explicit,
                                    check_c2ser_implicit, check_direct_response, check_eips, check_eips_gold,
                                    check_elaborate, check_elaborate_sr, check_label_only, check_label_only_sr,
                                    check_plain_line, check_summarize, check_summarize_sr, check_transcript_gold,
                                    format_dist_line, names_label)
from local.reasoning.prompts import prompt_fields, render
from local.reasoning.tasks import Task, gold_label, reference, task_spec
from local.reasoning.teacher import Request, Teacher

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TargetType:
    """Everything stages 3 and 10 know of one target type; :data:`TARGET_TYPES` holds one per type,
    so a new type is one entry there (and, for the offline teacher, one method on it).

    A type is written either by a teacher (``teacher_prompt``) or straight from the data
    (``from_data``: a transcript, a question's answer, the gold label in a sentence), whatever the
    teacher backend: asking an LLM to copy a table would only add its mistakes."""
    teacher_prompt: str | None = None  # prompts/<name>.txt the teacher reads; None: a from_data type
    # What the audio LLM reads: prompts/<name>.txt, "questions" (a question of its task's pool, see
    # local.reasoning.tasks) or "record" (the question its targets.jsonl record carries: SQA).
    instruction: str
    tables: tuple[str, ...] = ()  # data-dir tables it needs besides those of its task (see needed_tables)
    # The format validator (text, transcript or None) -> problem or None: needs no gold label, so
    # stage 10 asks it of a model's outputs (see format_problem).  Called with non-blank text.
    check: Callable[[str, str | None], str | None]
    offline: str = ""             # the OfflineTeacher method that writes it ("" for a from_data type)
    names_label: bool = False    # the answer must name the gold label (checked before the format)
    # A further check against the gold (after the format passed): request, answer -> problem or None.
    check_gold: Callable[[Request, str], str | None] | None = None
    keeps_dist: bool = False     # its targets.jsonl record carries the request's soft label ("dist")
    task: str = "er"             # the task it trains (local.reasoning.tasks.TASKS): er | sr | asr | sqa
    # (data, utt, task) -> [{"target": ..., "question": ... (optional)}]; ValueError: the utterance has
    # none, for the reason given.  Each target still passes ``check``.
    from_data: Callable[[DataDir, str, Task], list[dict]] | None = None

    def __post_init__(self):
        if (self.teacher_prompt is None) == (self.from_data is None):
            raise ValueError("a target type is written by a teacher (teacher_prompt) or from the data (from_data): "
                             "give exactly one")


# --- requests -----------------------------------------------------------------------

# Tables a corpus may not have (a stage makes the others): a type that needs one is left out without it.
CORPUS_OPTIONAL = ("utt2dist", "utt2sentiment", "utt2qa")


def needed_tables(target_type: str) -> tuple[str, ...]:
    """The data-dir tables a type reads: the transcript (a teacher's prompt quotes it; ASR is it), its
    task's label table, utt2qa for SQA, and the type's own ``tables``."""
    spec = target_spec(target_type)
    task = task_spec(spec.task)
    needs = ["text"] if spec.teacher_prompt is not None or task.reference == "text" else []
    needs += [task.label_table] if task.label_table else []
    needs += ["utt2qa"] if task.reference == "qa" else []
    return tuple(dict.fromkeys([*needs, *spec.tables]))


def check_tables(data: DataDir, path: Path, types: Iterable[str]) -> list[str]:
    """The requested types this data dir can have, before asking anything.  A table a type needs that a
    stage makes (utt2attr: stage 2) is an error when missing; a type that needs what a corpus may lack
    is left out of it, saying so: soft labels (ambiguity_cot; MELD, ESD have one label per utterance),
    a sentiment (the SR types; MELD has one, others only with corpus.sentiment_map) or question/answer
    pairs (sqa).  A system that trains on such a type then finds no such targets in stage 6."""
    usable = []
    for t in types:
        tables = needed_tables(t)
        for table in tables:
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
    """One request per (utterance, teacher-written type), and the (utt, type, reason) of those that
    cannot be asked.  Types written from the data (``from_data``) are not requests: see
    :func:`data_targets`.

    A request carries its task's gold (the emotion for ER types, the sentiment for SR types) and
    its task's wording in the prompt's ``${task}``.  An utterance without that gold is not asked.
    A type whose prompt states a level that stage 2 could not measure is not asked either: a teacher
    told the pitch is "unknown" would invent one, and the target would teach the model a claim nobody
    measured.  Other types of the same utterance are still asked.
    """
    types = [t for t in types if target_spec(t).from_data is None]
    requests, rejected = [], []
    if not types:
        return requests, rejected
    for utt in data.utts:
        text = (data.get("text") or {}).get(utt, "").strip()
        lang = (data.get("utt2lang") or {}).get(utt, default_lang)
        try:
            attrs = parse_kv(data["utt2attr"][utt]) if "utt2attr" in data else {}
            dist = parse_dist(data["utt2dist"][utt]) if "utt2dist" in data else None
        except ValueError as e:
            rejected += [(utt, t, f"bad utt2attr/utt2dist value: {e}") for t in types]
            continue
        fields = {"text": text}
        # prompt field -> (utt2attr key, level)
        energy = "loudness" if "loudness" in attrs else "energy"
        levels = {"rate": ("rate", attrs.get("rate")), "pitch": ("pitch", attrs.get("pitch")),
                  "energy": (energy, attrs.get(energy))}
        fields.update({k: v.lower() for k, (_, v) in levels.items() if v and v != UNMEASURED})
        unmeasured = {k: key for k, (key, v) in levels.items() if v == UNMEASURED}
        if dist:
            fields["dist"] = format_dist_line(dist)
        for t in types:
            spec, task, label, problem = task_label(data, utt, t)
            if problem:
                rejected.append((utt, t, problem))
                continue
            if not text:
                rejected.append((utt, t, "empty transcript"))
                continue
            needs = prompt_fields(spec.teacher_prompt)
            needed = sorted(key for k, key in unmeasured.items() if k in needs)
            if needed:
                rejected.append((utt, t, f"attributes not measurable: {', '.join(needed)}"))
                continue
            try:
                prompt = render(spec.teacher_prompt, **fields, label=label or "", task=task.wording)
            except KeyError as e:
                rejected.append((utt, t, f"missing input for the prompt: {e.args[0]} (see utt2attr/utt2dist)"))
                continue
            requests.append(Request(key=f"{utt} {t}", type=t, prompt=prompt, utt=utt, label=label or "",
                                    text=text, attrs=attrs, dist=dist, lang=lang))
    return requests, rejected


def task_label(data: DataDir, utt: str, target_type: str) -> tuple[TargetType, Task, str | None, str | None]:
    """(spec, its task, the utterance's gold label of that task, why it cannot have the type or None)."""
    spec = TARGET_TYPES[target_type]
    task = task_spec(spec.task)
    label = gold_label(task, data, utt)
    return spec, task, label, (f"no label in {task.label_table}" if task.label_table and not label else None)


def data_targets(data: DataDir, types: Sequence[str]) -> tuple[list[tuple[Request, dict]], list[tuple[str, str, str]]]:
    """The targets of the ``from_data`` types among ``types``: (request, item) per target, the request
    standing for the utterance as a teacher's would (so :func:`check_target` checks both alike), and
    the (utt, type, reason) of utterances that have none."""
    types = [t for t in types if target_spec(t).from_data is not None]
    items, rejected = [], []
    for utt in data.utts if types else ():
        text = (data.get("text") or {}).get(utt, "").strip()
        for t in types:
            spec, task, label, problem = task_label(data, utt, t)
            if problem:
                rejected.append((utt, t, problem))
                continue
            try:
                found = spec.from_data(data, utt, task)
            except ValueError as e:
                rejected.append((utt, t, str(e)))
                continue
            request = Request(key=f"{utt} {t}", type=t, utt=utt, label=label or "", text=text)
            items += [(request, item) for item in found]
    return items, rejected


# --- types written from the data (TargetType.from_data) -----------------------------------------------
# (their checks, check_label_only ... check_transcript_gold, are in local.reasoning.checks)


def label_only_sentence(label: str) -> str:
    return f"The speaker's speech reflects {'an' if label[:1].lower() in 'aeiou' else 'a'} {label} state."


def label_only_targets(data: DataDir, utt: str, task: Task) -> list[dict]:
    label = gold_label(task, data, utt)
    sentence = label_only_sentence(label) if task.name == "er" else f"The speaker's sentiment is {label}."
    return [{"target": sentence}]


def transcript_targets(data: DataDir, utt: str, task: Task) -> list[dict]:
    text = reference(task, data, utt)
    if not text:
        raise ValueError("empty transcript")
    return [{"target": text}]


def qa_targets(data: DataDir, utt: str, task: Task) -> list[dict]:
    """One target per (question, answer) pair of utt2qa: the answer, asked by its question."""
    try:
        pairs = reference(task, data, utt) or []
    except ValueError as e:
        raise ValueError(f"bad utt2qa value: {e}") from None
    return [{"target": answer, "question": question} for question, answer in pairs]


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
    # The same two for the SR task: the prompts' ${task} reads "sentiment (positive, negative, neutral)".
    "summarize_sr": TargetType(teacher_prompt="reasoning_summarize", instruction="questions", task="sr",
                               check=check_summarize_sr, offline="summarize", names_label=True),
    "elaborate_sr": TargetType(teacher_prompt="reasoning_elaborate", instruction="questions", task="sr",
                               check=check_elaborate_sr, offline="elaborate", names_label=True),
    # The paper's "Label Only (Original)" baseline targets, from the gold label.
    "label_only": TargetType(from_data=label_only_targets, instruction="questions", task="er",
                             check=check_label_only, names_label=True),
    "label_only_sr": TargetType(from_data=label_only_targets, instruction="questions", task="sr",
                                check=check_label_only_sr, names_label=True),
    # The speech tasks: the transcript (ASR) and each question's answer (SQA), from the data.
    "asr": TargetType(from_data=transcript_targets, instruction="questions", task="asr",
                      check=check_plain_line, check_gold=check_transcript_gold),
    "sqa": TargetType(from_data=qa_targets, instruction="record", task="sqa", check=check_plain_line),
}


def register_target_type(name: str, spec: TargetType) -> TargetType:
    """Add a target type (a plugin's); the same definition again is a no-op, another under a known name
    an error.  Its task must be known, and a pool instruction needs a task with training questions."""
    task = task_spec(spec.task)
    if spec.instruction == "questions" and task.train_pool is None:
        raise ValueError(f"target type '{name}': task '{task.name}' has no question pool; use instruction 'record'")
    known = TARGET_TYPES.get(name)
    if known is not None and known != spec:
        raise ValueError(f"target type '{name}' is already registered with another definition")
    TARGET_TYPES[name] = spec
    return spec


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
    """Write ``targets.jsonl`` (and ``targets.rejected``) of one data dir; returns counts.

    A record is ``{"utt", "type", "task", "target", "label" (label tasks), "question" (SQA),
    "teacher" ("data" for a from_data type), "dist" (keeps_dist types)}``."""
    path = Path(data_dir)
    data = DataDir.load(path)
    types = check_tables(data, path, list(dict.fromkeys(types)))
    requests, rejected = build_requests(data, types, default_lang)
    # A run of from_data types only (asr, sqa) must not load a teacher model to answer nothing.
    answers = teacher.generate(requests) if requests else []
    if len(answers) != len(requests):
        raise RuntimeError(f"{teacher.name} returned {len(answers)} answers for {len(requests)} requests")
    if requests and all(a is None for a in answers):
        # An unreachable endpoint or a broken model: empty targets must not pass for a finished stage.
        raise RuntimeError(f"{path}: teacher {teacher.name} answered none of {len(requests)} requests "
                           "(see the log above); nothing written")
    from_data, data_rejected = data_targets(data, types)
    rejected += data_rejected

    records = []
    written = [(r, {"target": a}, teacher.name) for r, a in zip(requests, answers)]
    written += [(r, item, "data") for r, item in from_data]
    for request, item, source in written:
        answer = item["target"]
        reason = check_target(request, answer)
        if reason:
            rejected.append((request.utt, request.type, reason))
            continue
        spec = TARGET_TYPES[request.type]
        task = task_spec(spec.task)
        # "label": the gold of the record's task (an emotion, a sentiment); free-text tasks have none.
        record = {"utt": request.utt, "type": request.type, "task": task.name, "target": answer.strip()}
        if task.label_table:
            record["label"] = request.label
        if item.get("question"):
            record["question"] = item["question"]
        record["teacher"] = source
        if spec.keeps_dist:
            record["dist"] = request.dist
        records.append(record)
    for utt, t, reason in rejected:
        log.warning("%s: rejected %s target of %s: %s", path, t, utt, reason)

    records.sort(key=lambda r: (r["utt"], r["type"]))  # stable: an utterance's SQA pairs keep their order
    _write_atomic(path / "targets.jsonl", (json.dumps(r, ensure_ascii=False) for r in records))
    if rejected:
        _write_atomic(path / "targets.rejected",
                      (f"{utt} {t} {' '.join(reason.split())}" for utt, t, reason in sorted(rejected)))
    else:
        (path / "targets.rejected").unlink(missing_ok=True)
    return {"written": len(records), "rejected": len(rejected)}
