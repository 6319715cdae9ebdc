"""The tasks of AudioLLM-Reasoning's multitask model: ER, SR, ASR and SQA (shared/reasoning_system.md B.3).

One audio LLM learns all four, and every stage treats them alike only if each
stage can ask the same registry what a task *is*: where its gold sits in a
data dir (a label table, the transcript, the question/answer pairs), which
question pool asks for it at training and at evaluation time, which side of a
task-alternating schedule trains it (the paper's speech rounds train ASR/SQA,
its emotion rounds ER/SR), and how it is scored.  Keeping that here, rather
than in stage 3, 6 and 10 separately, is what lets a plugin add a fifth task
with one :func:`register_task` call.

Training and evaluation questions are disjoint pools (questions.json): the
paper samples training questions from a curated pool and evaluates with
AudioBench-style ones, and a model asked at test time exactly what it was
trained on would be scored on memorised prompts.
"""
from __future__ import annotations

from dataclasses import dataclass
from string import Template
from typing import Sequence

import numpy as np

from local.data.kaldi import SENTIMENTS, DataDir, parse_qa
from local.reasoning.prompts import load_questions

__all__ = ["SENTIMENTS", "Task", "TASKS", "register_task", "task_spec", "task_groups", "task_labels",
           "gold_label", "reference", "pool_questions", "draw_question"]

REFERENCES = ("text", "qa")
SPLITS = ("train", "eval")


@dataclass(frozen=True, kw_only=True)
class Task:
    """What every stage needs to know of one task; :data:`TASKS` holds one per task."""
    name: str                  # er | sr | asr | sqa
    group: str                 # "emotion" | "speech": which rounds of a task-alternating schedule train it
    wording: str               # the ${task} of the teacher prompts: "emotion" | "sentiment (positive, ...)"
    label_table: str | None    # data-dir table of its gold label (utt2emo, utt2sentiment); None: a free-text task
    labels: tuple[str, ...] | None = None   # its closed label set; None with a label_table: the recipe's
    reference: str | None = None  # free-text tasks: where the reference is: "text" (the transcript) | "qa" (utt2qa)
    train_pool: str | None = None # questions.json pool of training instructions; None: the record's own question
    eval_pool: str | None = None  # questions.json pool of evaluation instructions (disjoint from train)
    metric: str = "accuracy"   # accuracy | wer | judge:sqa   (the scorer maps these)

    def __post_init__(self):
        # A task must say where its gold is, or no stage could write a target or score an answer.
        if (self.label_table is None) == (self.reference is None):
            raise ValueError(f"task '{self.name}': give exactly one of label_table (a label task) and "
                             f"reference (a free-text task: {' or '.join(REFERENCES)})")
        if self.reference is not None and self.reference not in REFERENCES:
            raise ValueError(f"task '{self.name}': reference '{self.reference}' is not one of {', '.join(REFERENCES)}")
        if self.labels is not None and self.label_table is None:
            raise ValueError(f"task '{self.name}': a label set needs a label_table")
        if not self.name or not self.group or not self.metric:
            raise ValueError(f"task {self.name!r}: name, group and metric must not be empty")


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS`.  Registering the same definition again is a no-op (a plugin module
    imported twice); another definition under a known name is an error, since stages that already read
    the first would disagree with those reading the second."""
    known = TASKS.get(task.name)
    if known is not None and known != task:
        raise ValueError(f"task '{task.name}' is already registered with another definition: {known}")
    TASKS[task.name] = task
    return task


register_task(Task(name="er", group="emotion", wording="emotion", label_table="utt2emo",
                   train_pool="emotion", eval_pool="emotion_eval", metric="accuracy"))
register_task(Task(name="sr", group="emotion", wording="sentiment (positive, negative, neutral)",
                   label_table="utt2sentiment", labels=SENTIMENTS,
                   train_pool="sentiment", eval_pool="sentiment_eval", metric="accuracy"))
register_task(Task(name="asr", group="speech", wording="transcript", label_table=None, reference="text",
                   train_pool="asr", eval_pool="asr_eval", metric="wer"))
# SQA's instruction is the question of the data itself; there is nothing to sample.
register_task(Task(name="sqa", group="speech", wording="answer to the question", label_table=None, reference="qa",
                   metric="judge:sqa"))


def task_spec(name: str) -> Task:
    """The registry entry of ``name``, or an error naming the known tasks."""
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}' (known: {', '.join(TASKS)})")
    return TASKS[name]


def task_groups() -> dict[str, tuple[str, ...]]:
    """Group -> its tasks, both in registration order: ``{"emotion": ("er", "sr"), "speech": ("asr", "sqa")}``."""
    groups: dict[str, list[str]] = {}
    for task in TASKS.values():
        groups.setdefault(task.group, []).append(task.name)
    return {g: tuple(names) for g, names in groups.items()}


def task_labels(task: Task, corpus_labels: Sequence[str]) -> tuple[str, ...] | None:
    """The closed label set of a label task (its own, or else the recipe's); None for a free-text task."""
    if task.label_table is None:
        return None
    return tuple(task.labels) if task.labels is not None else tuple(corpus_labels)


def gold_label(task: Task, data: DataDir, utt: str) -> str | None:
    """The utterance's gold label from the task's table; None when the table or the line is absent
    (or the task has no label)."""
    if task.label_table is None:
        return None
    value = (data.get(task.label_table) or {}).get(utt, "").strip()
    return value or None


def reference(task: Task, data: DataDir, utt: str) -> str | list[tuple[str, str]] | None:
    """What an answer of ``task`` is compared with: ASR the transcript, SQA the utterance's list of
    (question, answer) pairs, a label task its gold label.  None when the data dir has none for ``utt``.
    A malformed utt2qa line is a ValueError (the validator names its file and line)."""
    if task.reference is None:
        return gold_label(task, data, utt)
    if task.reference == "text":
        text = (data.get("text") or {}).get(utt)
        return None if text is None else text.strip()
    value = (data.get("utt2qa") or {}).get(utt)
    return None if value is None else parse_qa(value)


def _pool_name(task: Task, split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not '{split}'")
    pool = task.train_pool if split == "train" else task.eval_pool
    if pool is None:
        raise ValueError(f"task '{task.name}' has no {split} question pool: its question is the data's own")
    return pool


def pool_questions(task: Task, split: str, labels: Sequence[str]) -> list[str]:
    """Every question of the task's ``split`` pool ("train" or "eval"), with ``${labels}`` (AudioBench's
    parenthesised label list) filled with ``labels``, in pool order."""
    name = _pool_name(task, split)
    pools = load_questions()
    if name not in pools or not pools[name]:
        raise ValueError(f"task '{task.name}': questions.json has no (or an empty) pool '{name}' "
                         f"(pools: {', '.join(pools)})")
    joined = ", ".join(labels)
    # safe_substitute: a question may legitimately contain a dollar sign; only ${labels} is ours.
    return [Template(q).safe_substitute(labels=joined) for q in pools[name]]


def draw_question(task: Task, split: str, labels: Sequence[str], rng: np.random.Generator) -> str:
    """One question of the task's ``split`` pool, drawn with ``rng`` and rendered as :func:`pool_questions` does;
    ValueError for a task without such a pool (SQA asks the data's question)."""
    questions = pool_questions(task, split, labels)
    return questions[int(rng.integers(len(questions)))]
