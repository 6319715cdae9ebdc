"""Stage 9: decode every test set with every prompt mode (explicit and implicit CoT by default).

    python -m local.bin.decode decode.batch_size=32 decode.sample=true
    python -m local.bin.decode 'test_sets=[/path/to/my/kaldi_dir]'

Writes ``<exp_dir>/decode_<set>_<mode>/hyps.jsonl``, ``timing.json`` and ``provenance.json``; with
``decode.dist=true`` also ``hyp_dist``, the class-name distribution read after each hypothesis.  How the model
was trained (each target type's instruction, the transcript in the prompt, the read-out) comes from its own
``training.yaml``, never from the live config: ``decode.prompts`` only says which target type a mode asks for.

Split into jobs (one per GPU; run.sh does this with --ngpu N, as ESPnet splits an scp):

    python -m local.bin.decode decode.num_jobs=2 decode.job=1   # and decode.job=2, anywhere, at once
    python -m local.bin.decode decode.num_jobs=2                # merges the parts, writes the record

Job k decodes the whole batches k, k + N, ... of the one-job plan into ``decode_*/split<N>/<k>/``; the merge
checks the parts and writes the decode dir one job would have written.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from local.bin.stages import STAGES, restrict, stage_run
from local.data.kaldi import DataDir
from local.data.labels import EMOTIONS
from local.eval.decode import check_model_config, decode_test_set, generation_kwargs, merge_parts, \
    resolve_test_set, write_decode_dir
from local.eval.extract import explain
from local.eval.task_decode import add_task_fields, task_instruction
from local.models import alm
from local.models.cache import cached_shards
from local.models.readout import Readout
from local.reasoning.tasks import task_labels, task_spec
from local.utils.hydra import cli_overrides, entry_point
from local.utils.paths import decode_dir, decode_model

log = logging.getLogger("decode")


def trained_target(model: alm.AudioLLM, model_dir: Path, mode: str, target: str) -> dict:
    """How ``model`` was trained to be asked for ``target`` (its training.yaml entry)."""
    known = model.facts.get("targets") or {}
    if target not in known:
        raise ValueError(f"decode mode '{mode}' asks for target type '{target}', which {model_dir} was not trained "
                         f"on (it knows: {', '.join(known) or 'nothing: no training.yaml'}); set decode.modes to "
                         "the modes it can answer")
    if not known[target].get("text") and not known[target].get("task"):
        raise ValueError(f"{target}: {model_dir} was trained on a question pool its training.yaml does not keep "
                         "(trained before the task registry); retrain it to decode this mode")
    return dict(known[target])


def decode_sets(cfg: DictConfig, part: tuple[int, int] = (0, 1)) -> None:
    """Decode every test set and mode, or (``part`` = (job, jobs), job from 0) that job's share of each."""
    opts = cfg.decode
    model_dir = decode_model(cfg)
    device = opts.device if opts.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    unknown = [m for m in opts.modes if m not in opts.prompts]
    if unknown:
        raise ValueError(f"decode.modes {unknown} have no entry in decode.prompts ({', '.join(opts.prompts)})")
    model = alm.load_alm(model_dir, device=device)
    facts = model.facts
    readout = None
    if opts.dist:
        if not facts.get("readout"):
            raise ValueError(f"decode.dist=true, but {model_dir} was trained without a read-out (sft.readout)")
        readout = Readout(model.tokenizer, **facts["readout"])
    for entry in cfg.test_sets:
        shard_subdir = opts.shard_subdir
        if shard_subdir is None and not Path(entry).is_absolute() and (Path(cfg.data_root) / entry).is_dir():
            shard_subdir = cached_shards(model, cfg, entry)[0].name  # a set of this recipe: use the cache
        test_set = resolve_test_set(entry, cfg.data_root, cfg.dump_root, shard_subdir or "shards", opts.source)
        data = None  # the set's data dir, read when a task needs its gold, references or questions
        for mode in opts.modes:
            target = opts.prompts[mode]
            known = trained_target(model, model_dir, mode, target)
            if known.get("task") and data is None and test_set.data_dir.is_dir():
                data = DataDir.load(test_set.data_dir)
            text = task_instruction(known, target, data, cfg.seed, opts.get("questions", "eval"))
            gen = generation_kwargs(opts.max_new_tokens[target], opts.sample, opts.temperature, opts.top_p)
            torch.manual_seed(cfg.seed)
            records, timing = decode_test_set(
                model, test_set, text, gen, batch_size=opts.batch_size, max_seconds=opts.max_seconds,
                features=None if opts.features is None else list(opts.features),
                num_workers=opts.num_workers, transcript_in_prompt=bool(facts.get("transcript_in_prompt")),
                readout=readout, speaker_stats=opts.speaker_stats, part=part)
            out_dir = decode_dir(cfg, entry, mode)
            if part[1] > 1:
                out_dir = out_dir / f"split{part[1]}" / str(part[0] + 1)
            task = known.get("task")
            labels = facts.get("labels") or list(EMOTIONS)
            if task:  # ER / SR / ASR / SQA: the task's gold, reference and labels (local/eval/task_decode.py)
                add_task_fields(records, task, data, cfg.seed)
                labels = list(task_labels(task_spec(task), labels) or [])
            for r in records:  # the rules' reading (stage 10's with score.extract=rules), beside the gold label
                if not labels:  # a free-text task (ASR, SQA): no label to read
                    break
                r["pred"], why = explain(r["hyp"], labels)
                if why:
                    r["pred_why"] = why
            write_decode_dir(out_dir, records, {
                **timing, "set": test_set.name, "mode": mode, "target": target,
                "labels": (labels or None) if task else facts.get("labels"), **({"task": task} if task else {}),
                "data_dir": str(test_set.data_dir),
                "source": "data" if test_set.shard_dir is None else str(test_set.shard_dir),
                "model_dir": str(model_dir), "instruction": text if isinstance(text, str) else
                ("per utterance: its own question" if known.get("instruction") == "record"
                 else f"per utterance: a question of the {opts.get('questions', 'eval')} pool"), "gen_kwargs": gen,
                "batch_size": opts.batch_size, "device": device, "speaker_stats": opts.speaker_stats,
                "readout": facts.get("readout") if opts.dist else None,
                **({"part": [part[0] + 1, part[1]]} if part[1] > 1 else {})})
            log.info("%s: %d utterances, %.3f s/utt, %.1f tokens/utt, %d rejected -> %s", out_dir.name,
                     timing["n"], timing["sec_per_utt"] or 0, timing["tokens_per_utt"] or 0,
                     timing["rejected"], out_dir)


@entry_point
def main(cfg: DictConfig) -> None:
    jobs, job = int(cfg.decode.num_jobs), cfg.decode.job
    if jobs < 1 or (job is not None and not 1 <= int(job) <= jobs):
        raise ValueError(f"decode.job={job} decode.num_jobs={jobs}: a job is a number from 1 to num_jobs")
    if job is not None and jobs == 1:
        raise ValueError("decode.job is set but decode.num_jobs is 1: one job decodes everything; drop decode.job")
    if job is not None or jobs == 1:  # what decodes checks the model; a merge only reads the parts
        check_model_config(decode_model(cfg), cfg.model, cli_overrides(), own=not cfg.decode.get("model_dir"))
    if job is not None:  # one job's part: the merge writes the record, once every part is there
        decode_sets(restrict(cfg, STAGES["decode"]), (int(job) - 1, jobs))
        return
    with stage_run(cfg, "decode") as run:
        if jobs == 1:
            decode_sets(run.cfg)
            return
        for entry in run.cfg.test_sets:
            for mode in run.cfg.decode.modes:
                merge_parts(decode_dir(run.cfg, entry, mode), jobs)
                log.info("%s: merged the parts of %d jobs", decode_dir(run.cfg, entry, mode), jobs)


if __name__ == "__main__":
    main()
