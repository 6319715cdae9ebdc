"""What stage 9 asks, and what it keeps beside each output, for a target type of a task (ER, SR, ASR, SQA).

A multitask model (AudioLLM-Reasoning) is asked each task the way it was trained, but in its evaluation
form (§4.3): ER and SR with a question drawn from the task's *evaluation* pool (AudioBench style, disjoint
from the training questions; the model's training.yaml keeps both pools, so an edit of questions.json
cannot change what an old model is asked), SQA with a question of the utterance's own ``utt2qa``.  The
draws are seeded by (seed, utterance), so a re-run, or another model on the same set, is asked the same.

Each record then carries what stage 10 scores it against: ``task``, ``label`` (the task's gold label:
the sentiment for SR, none for ASR / SQA), ``ref`` (ASR: the transcript; SQA: the answer) and
``question`` (SQA).
"""
from __future__ import annotations

import zlib
from typing import Callable, Mapping, Sequence

import numpy as np

from local.data.kaldi import DataDir
from local.reasoning.tasks import Task, gold_label, reference, task_spec


def _rng(seed: int, utt: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(utt.encode()), 9])


def sqa_pair(data: DataDir, task: Task, utt: str, seed: int) -> tuple[str, str] | None:
    """The (question, answer) of ``utt`` that stage 9 asks: one of its pairs, drawn from (seed, utt)."""
    pairs = reference(task, data, utt)
    if not pairs:
        return None
    return tuple(pairs[int(_rng(seed, utt).integers(len(pairs)))])


def task_instruction(known: Mapping, target: str, data: DataDir | None, seed: int, split: str = "eval"
                     ) -> str | Callable[[str, Mapping], str]:
    """The instruction of ``target`` as the model was trained with it (``known`` = its training.yaml entry):
    a fixed text, or a per-utterance question, of the ``split`` pool ("eval"; "train": the questions it was
    trained with, for a model that cannot read unseen wording, e.g. a tiny LM trained from scratch)."""
    if known.get("text"):
        return known["text"]
    task = task_spec(known["task"])
    if known.get("instruction") == "record":
        if data is None:
            raise ValueError(f"target type '{target}' asks each utterance its own question ({task.name}), which "
                             "is in the test set's data dir; this test set has none")

        def own_question(utt: str, meta: Mapping) -> str:
            pair = sqa_pair(data, task, utt, seed)
            if pair is None:
                raise ValueError(f"{data.path if hasattr(data, 'path') else 'the test set'}: utterance {utt} has no "
                                 f"question for task {task.name} (utt2qa)")
            return pair[0]
        return own_question
    pool: Sequence[str] = (known.get("questions") or {}).get(split) or ()
    if not pool:
        raise ValueError(f"target type '{target}': the model's training.yaml has no '{split}' questions for it")
    return lambda utt, meta: pool[int(_rng(seed, utt).integers(len(pool)))]


def add_task_fields(records: list[dict], task_name: str, data: DataDir | None, seed: int) -> None:
    """Give each record its task's gold label, reference and question (see the module docstring)."""
    task = task_spec(task_name)
    for r in records:
        r["task"] = task.name
        if data is None or r["utt"] not in data.utts:
            r["label"] = None
            continue
        r["label"] = gold_label(task, data, r["utt"]) if task.label_table else None
        if task.reference == "qa":
            pair = sqa_pair(data, task, r["utt"], seed)
            r["question"], r["ref"] = pair if pair else (None, None)
        elif task.reference:
            r["ref"] = reference(task, data, r["utt"])
