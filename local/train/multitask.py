"""Multitask SFT under a schedule of rounds: AudioLLM-Reasoning's joint and task-alternating training.

The paper trains one audio LLM on ER, SR, SQA and ASR (§3.3, shared/reasoning_system.md B.5) and
compares *schedules*: joint (every task, every encoder + adapter + LoRA), "Alt x" (speech rounds on
ASR/SQA train the speech side, emotion rounds on ER/SR the emotion side, then a final all-task round of
adapters + LoRA) and emotion injection.  A schedule is config (``conf/schedule/<name>.yaml``, read by
:mod:`local.train.rounds`); this module runs it: one :class:`~local.train.loop.Trainer` per round, in
``<exp_dir>/rounds/<k>_<name>/``.  Why one trainer per round rather than one that changes its mind:

* a round boundary needs a fresh AdamW over the round's parameters (stale moments move frozen tensors,
  local/train/rounds.py explains), and under DDP a new wrapper (the set of parameters that get
  gradients changes); a new Trainer does both, with no new code in the loop;
* each round checkpoints and resumes on its own: a killed run re-runs, every finished round reloads its
  last checkpoint (the whole model, so the next round starts from exactly its weights) and returns at
  once, and the interrupted round resumes mid-epoch;
* each round's learning-rate schedule (warm-up, cosine) spans that round, as a fresh optimizer's should.

Which target each task trains on is ``stage.tasks`` (task -> target type; the type's ``task`` must be
that task).  A batch of utterances becomes one row per (utterance, task of the round) that has a target
of that type: an epoch of a round reads every utterance's example of each of its tasks once, i.e. an
epoch of each task's data (mini_lime's utterances carry all four tasks; a corpus without SQA pairs
simply has no SQA rows).  A task with several targets per utterance (SQA: 2-3 question/answer pairs)
gives one of them per epoch, drawn from (seed, step, utterance, task), so a resumed run draws the same.
"""
from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from local.reasoning.prompts import with_transcript
from local.reasoning.targets import target_spec
from local.train.loop import Trainer
from local.train.rounds import Round, apply_round, load_schedule, parse_rounds, restore_trainable
from local.utils.digest import value_digest

log = logging.getLogger(__name__)


def stage_tasks(stage: DictConfig) -> dict[str, str]:
    """``stage.tasks`` (task -> target type), each type checked to exist and to be of that task."""
    tasks = OmegaConf.to_container(stage.tasks, resolve=True) if OmegaConf.is_config(stage.tasks) else stage.tasks
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError(f"tasks must map each task to its target type, e.g. {{er: elaborate, asr: asr}}; got {tasks!r}")
    for task, target_type in tasks.items():
        spec = target_spec(target_type)
        if spec.task != task:
            raise ValueError(f"tasks.{task}: target type '{target_type}' is a target of task '{spec.task}', not '{task}'")
    return dict(tasks)


def rng_for(seed: int, step: int, utt: str, salt: str) -> np.random.Generator:
    return np.random.default_rng([seed, step, zlib.crc32(utt.encode()), zlib.crc32(salt.encode())])


def train_instruction(target_type: str, record: Mapping, rng: np.random.Generator, facts: Mapping) -> str:
    """What the model is asked for ``record``: the type's fixed instruction, a question of its task's
    training pool (as recorded in the model's facts), or the record's own question (SQA)."""
    known = (facts.get("targets") or {}).get(target_type) or {}
    if known.get("text"):
        return known["text"]
    if known.get("instruction") == "record":
        if not record.get("question"):
            raise ValueError(f"a {target_type} target of {record.get('utt')} has no question (targets.jsonl)")
        return record["question"]
    pool = (known.get("questions") or {}).get("train")
    if not pool:
        raise ValueError(f"target type '{target_type}' has no instruction and no training questions in the "
                         "model's facts (training.yaml)")
    return pool[int(rng.integers(len(pool)))]


def task_batch(batch: Mapping, types: Mapping[str, str], rnd: Round, step: int, seed: int, facts: Mapping,
               transcript: bool = False) -> dict | None:
    """The batch as rows (utterance, task of ``rnd``) with "prompts", "responses" and "tasks"; None when no
    utterance has a target of the round's tasks."""
    from local.train.sft import select_rows  # sft imports this module
    rows, prompts, responses, tasks = [], [], [], []
    utts = batch.get("utts") or [m.get("utt") for m in batch["meta"]]
    for i, records in enumerate(batch["targets"]):
        for task, target_type in types.items():
            if not rnd.covers(task):
                continue
            found = [r for r in records if r["type"] == target_type]
            if not found:
                continue
            rng = rng_for(seed, step, utts[i], task)
            record = found[int(rng.integers(len(found)))]
            prompt = train_instruction(target_type, record, rng, facts)
            if transcript:
                text = batch["meta"][i].get("text")
                if not text:
                    raise ValueError(f"the prompt carries the transcript (transcript_in_prompt), and {utts[i]} has none")
                prompt = with_transcript(prompt, text)
            rows.append(i)
            prompts.append(prompt)
            responses.append(record["target"])
            tasks.append(task)
    if not rows:
        return None
    out = select_rows(batch, rows)
    out["prompts"], out["responses"], out["tasks"] = prompts, responses, tasks
    return out


def check_rounds(rounds: Sequence[Round], types: Mapping[str, str]) -> None:
    """Every task a round names has a target type in ``tasks``: a round with nothing to read is a typo."""
    for rnd in rounds:
        if "all" in rnd.tasks:
            continue
        unknown = [t for t in rnd.tasks if t not in types]
        if unknown:
            raise ValueError(f"schedule round '{rnd.name}' trains task(s) {unknown}, which tasks ({', '.join(types)}) "
                             "gives no target type")


def run_rounds(model, cfg: DictConfig, stage: DictConfig, loaders, sft_loss, *, facts: Mapping,
               fingerprint: str | None = None, kl_weight: float = 0.0) -> None:
    """Train ``model`` through the rounds of ``stage.rounds`` (a list of rounds, which an experiment puts there
    from conf/schedule/ with ``- /schedule@sft: <name>`` so the stage's fingerprint holds them, or a
    schedule's name).  ``loaders(k)`` builds round k's (train,
    valid) loaders (called with every built-trainable parameter trainable, so the frozen-encoder cache
    is the model's, not the round's); ``sft_loss(module, batch)`` is the stage's loss."""
    rounds = load_schedule(stage.rounds) if isinstance(stage.rounds, str) else parse_rounds(stage.rounds)
    types = stage_tasks(stage)
    check_rounds(rounds, types)
    transcript = bool(facts.get("transcript_in_prompt"))
    exp_dir = Path(stage.exp_dir)
    valid_batches = stage.get("valid_batches")
    for k, rnd in enumerate(rounds):
        restore_trainable(model)
        train, valid = loaders(k)
        counts = apply_round(model, rnd)
        log.info("round %d/%d '%s': tasks %s, %d epoch(s), training %s", k + 1, len(rounds), rnd.name,
                 ", ".join(rnd.tasks), rnd.epochs, ", ".join(f"{g} ({n:,})" for g, n in counts.items()))
        trainer: Trainer | None = None

        def step_fn(m, batch, rnd=rnd):
            step = trainer.step if trainer is not None else 0
            rows = task_batch(batch, types, rnd, step, cfg.seed, facts, transcript)
            if rows is None:
                raise ValueError(f"round '{rnd.name}': no utterance of the batch {batch['utts'][:3]} has a target "
                                 f"of its tasks ({', '.join(rnd.tasks)}: types {', '.join(types.values())}); "
                                 "did stage 3 write them (data/<set>/targets.jsonl)?")
            return sft_loss(m, rows, kl_weight)

        def valid_fn(m, loader, rnd=rnd):
            losses: dict[str, list[float]] = {}
            for j, batch in enumerate(loader):
                if valid_batches is not None and j >= valid_batches:
                    break
                for task in types:
                    if not rnd.covers(task):
                        continue
                    rows = task_batch(batch, {task: types[task]}, rnd, 0, cfg.seed, facts, transcript)
                    if rows is not None:
                        losses.setdefault(task, []).append(float(sft_loss(m, rows, kl_weight)[0]))
            out = {f"loss_{t}": float(np.mean(v)) for t, v in losses.items()}
            out["loss"] = float(np.mean(list(out.values()))) if out else float("nan")
            return out

        trainer_cfg = OmegaConf.merge(cfg.trainer, stage.get("trainer") or {},
                                      {"exp_dir": str(exp_dir / "rounds" / f"{k}_{rnd.name}"),
                                       "max_epochs": rnd.epochs})
        trainer = Trainer(model, step_fn, trainer_cfg, run_config=OmegaConf.to_container(cfg, resolve=True),
                          fingerprint=value_digest([fingerprint, k, rnd.name, rnd.tasks, rnd.train, rnd.epochs])
                          if fingerprint else None)
        trainer.fit(train, valid, valid_fn)
    restore_trainable(model)
