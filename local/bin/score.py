"""Stage 10: score every decode of the system (and the configured baselines) and print the tables.

    python -m local.bin.score
    python -m local.bin.score score.extract=llm teacher=openai teacher.model=qwen2.5-14b

Writes ``<exp_dir>/results.json``, ``results.md`` and ``confusion_<set>_<row>.png``;
the attribute baseline's predictions go to ``<exp_dir>/attr_baseline/<set>/``.  Decode dirs with a
``hyp_dist`` (``decode.dist=true``) are also scored against the test set's ``utt2dist``: JS (log base 2),
BC, Brier, ECE and arg-max accuracy.  ``score.judge_rubrics`` adds the judge's mean scores of each row
(``judge=offline|hf|openai``; CogAudio's empathy 1-4 in experiment/cogaudio.yaml), under the backend's name.
Every row counts the test set's utterances lost on the way (``rejected``); a decode whose timing.json names
its ``target`` type gets the share of well-formed outputs.  A baseline of ``score.baselines`` that has not been
decoded is an error, not a row quietly left out: a table without it would read as complete.

A multi-task system (AudioLLM-Reasoning) decodes one mode per task, and its timing.json names the ``task``;
such a row is scored by the task's metric and keeps ``task`` and ``experiment`` (``main``, or the entry of
``score.baselines`` it comes from; ``{baseline, modes: [...]}`` there gives one row ``<entry>_<mode>`` per
mode).  ``accuracy`` (er, sr): today's row on the task's closed ``labels`` (timing.json), the records'
``label`` being the task's gold, plus ``score.judge_rubrics`` (``grounded``: Table 4); ``wer`` (asr): the
corpus WER of ``hyp`` against ``ref``; ``judge:<rubric>`` (sqa): ``cfg.judge``'s mean score of the rubric,
``score`` its 0-100 form (AudioBench's mean x 20).  ``score.task_tables`` pivots these rows into the paper's
tables (local/eval/task_tables.py), under the per-set ones.
"""
from __future__ import annotations

import logging
from functools import cache
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from local.data.kaldi import parse_dist, parse_kv, read_table
from local.data.labels import recipe_labels
from local.eval.attr_baseline import AttributeBaseline
from local.eval.asr_metrics import wer_scores
from local.eval.decode import HYPS, find_decode_dirs, read_decode_dir, resolve_test_set, write_decode_dir
from local.eval.extract import extract_labels
from local.eval.judge import RUBRICS, Judge, JudgeItem, build_judge, normalise
from local.eval.report import count_words, judge_row, score_row, write_results
from local.eval.task_tables import check_task_tables, task_table_values, task_tables_markdown
from local.reasoning.tasks import TASKS, task_spec
from local.reasoning.teacher import build_teacher
from local.bin.stages import stage_run
from local.utils.digest import RECORD, file_digest
from local.utils.hydra import entry_point
from local.utils.paths import baseline_entries, left_out_baselines
from local.utils.provenance import read_json

log = logging.getLogger("score")


def attribute_row(trained: Callable[[], AttributeBaseline], cfg: DictConfig, entry: str, rows: dict) -> None:
    """Add the row ``attributes`` of one test set when its data dir has utt2attr (training the classifier once)."""
    name = Path(entry).name
    try:
        test_dir = resolve_test_set(entry, cfg.data_root, cfg.dump_root, source="data").data_dir
    except FileNotFoundError as e:
        log.warning("%s: no attribute baseline row: %s", name, e)
        return
    if not (test_dir / "utt2attr").is_file():
        log.warning("%s: no utt2attr in %s, no attribute baseline row", name, test_dir)
        return
    records, timing = trained().predict(test_dir)
    out = Path(cfg.score.exp_dir) / "attr_baseline" / name
    write_decode_dir(out, records, {**timing, "set": name})
    rows["attributes"] = with_source(out, (records, timing))


def set_data_dir(cfg: DictConfig, entry: str) -> Path | None:
    """The data dir of a ``test_sets`` entry, None when there is none."""
    try:
        return resolve_test_set(entry, cfg.data_root, cfg.dump_root, source="data").data_dir
    except FileNotFoundError:
        return None


def data_rejected(data_dir: Path | None) -> int:
    """The utterances stages 1-2 moved to the data dir's ``rejected``."""
    path = None if data_dir is None else data_dir / "rejected"
    if path is None or not path.is_file():
        return 0
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def utt_attributes(data_dir: Path | None) -> dict[str, dict[str, str]] | None:
    """The test set's stage-2 levels (utt2attr: utt -> {key: value}), None when it has none."""
    path = None if data_dir is None else data_dir / "utt2attr"
    if path is None or not path.is_file():
        return None
    attrs = {}
    for utt, value in read_table(path).items():
        try:
            attrs[utt] = parse_kv(value)
        except ValueError as e:
            raise ValueError(f"{path}: '{utt}': {e}") from None
    return attrs


def gold_distributions(cfg: DictConfig, entry: str) -> dict[str, dict[str, float]] | None:
    """The test set's soft labels (utt2dist), None when its data dir has none."""
    data_dir = set_data_dir(cfg, entry)
    path = None if data_dir is None else data_dir / "utt2dist"
    if path is None or not path.is_file():
        return None
    gold = {}
    for utt, value in read_table(path).items():
        try:
            gold[utt] = parse_dist(value)
        except ValueError as e:
            raise ValueError(f"{path}: '{utt}': {e}") from None
    return gold


def with_source(decode: Path, row: tuple[list[dict], dict], experiment: str | None = None
                ) -> tuple[list[dict], dict]:
    """The row, its timing told where it was read from, the digest of what it read (see keep_earlier) and
    the experiment it belongs to (what a task table's row is)."""
    records, timing = row
    return records, {**timing, "decode_dir": str(decode), "hyps_sha256": file_digest(decode / HYPS),
                     **({"experiment": experiment} if experiment else {})}


def keep_earlier(exp_dir: Path, results: dict, provenance: dict) -> list[str]:
    """Add to ``results`` and ``provenance`` the sets an earlier stage 10 scored that this one was not asked
    to (an extra test set scored last week stays in the report), each only while every one of its decode
    dirs still holds the very hyps.jsonl it was scored from: a set decoded again since, by another model,
    is dropped, never shown with old numbers.  Returns the kept sets' names."""
    def unchanged(source: Mapping) -> bool:
        hyps = Path(source.get("decode_dir") or "/nonexistent") / HYPS
        return hyps.is_file() and file_digest(hyps) == source.get("hyps_sha256")

    old = read_json(Path(exp_dir) / "results.json") or {}
    kept = []
    for name, table in (old.get("tables") or {}).items():
        made_of = ((old.get("provenance") or {}).get("tables") or {}).get(name) or {}
        if name in results or not all(unchanged((made_of.get("rows") or {}).get(row) or {}) for row in table):
            continue
        results[name] = table
        provenance["tables"][name] = {**made_of, "earlier": made_of.get("earlier") or old["provenance"].get("started")}
        kept.append(name)
    return kept


def collect_rows(cfg: DictConfig) -> dict[str, dict[str, tuple[list[dict], dict]]]:
    """{test set: {row: (records, timing)}}: the system's decodes (one row per mode of decode.modes: a
    decode dir of another mode, left from an earlier configuration, is not this system's), the baselines'
    and the attribute classifier's."""
    opts = cfg.score
    rows: dict[str, dict[str, tuple[list[dict], dict]]] = {}
    trained = cache(lambda: AttributeBaseline(opts.attr_features, C=opts.attr_C, seed=cfg.seed)
                    .fit(Path(cfg.data_root) / cfg.train_set))
    for entry in cfg.test_sets:
        name = Path(entry).name
        rows[name] = {}
        for mode in sorted(cfg.decode.modes):
            decode = Path(opts.exp_dir) / f"decode_{name}_{mode}"
            if not (decode / "hyps.jsonl").is_file():
                raise FileNotFoundError(f"{name}: mode '{mode}' has no decode: {decode} has no hyps.jsonl. Run "
                                        "stage 9 (decode) first, or score other modes with decode.modes=[...]")
            rows[name][mode] = with_source(decode, read_decode_dir(decode), "main")
        stale = sorted(set(find_decode_dirs(opts.exp_dir).get(name, {})) - set(cfg.decode.modes))
        if stale:
            log.warning("%s: decode dirs of modes %s in %s are not among decode.modes %s: left out", name, stale,
                        opts.exp_dir, list(cfg.decode.modes))
        for row, (experiment, template) in baseline_entries(cfg).items():
            if row in rows[name]:
                raise ValueError(f"score.baselines: row name '{row}' is also a decode mode of {opts.exp_dir}")
            baseline = Path(template.replace("{set}", name))
            if not (baseline / "hyps.jsonl").is_file():
                raise FileNotFoundError(
                    f"{name}: baseline '{row}' of score.baselines has no decode: {baseline} has no hyps.jsonl. "
                    f"Run the baseline's stage 9 (decode) first, or leave it out with score.baselines.{row}=null")
            rows[name][row] = with_source(baseline, read_decode_dir(baseline), experiment)
        if opts.attributes:
            attribute_row(trained, cfg, entry, rows[name])
        if not rows[name]:
            log.warning("%s: nothing to score (no decode_%s_* in %s)", name, name, opts.exp_dir)
            del rows[name]
    return rows


def judge_entry(judge: Judge, rubrics: Sequence[str], records: list[dict], labels: Sequence[str] = (),
                answers: bool = False) -> dict:
    """``judge`` (the backend, each rubric's mean scores, n_judged) and ``not_judged`` of one row: an output
    counts as judged when every rubric scored it.  ``labels``: the closed set the records' ``label`` is of
    (a sentiment row's), () for the emotions; ``answers``: the records are answers to their ``question``,
    judged against ``ref``."""
    items = [JudgeItem(utt=r["utt"], output=r["hyp"], label=r.get("label") or "", text=r.get("text") or "",
                       labels=tuple(labels),
                       **({"reference": r.get("ref") or "", "question": r.get("question") or ""} if answers else {}))
             for r in records]
    entry: dict = {"backend": judge.name}
    scored = [True] * len(items)
    for rubric in rubrics:
        scores = judge.score(items, rubric)
        entry.update(judge_row(scores, judge.name))
        scored = [ok and s is not None for ok, s in zip(scored, scores)]
    entry["n_judged"] = sum(scored)
    return {"judge": entry, "not_judged": len(items) - sum(scored)}


def judged_rubric(metric: str) -> str | None:
    """The judge rubric a task's metric is, None for a metric computed without a judge."""
    return metric.split(":", 1)[1] if metric.startswith("judge:") else None


def output_row(records: list[dict], timing: dict, lost: int) -> dict:
    """What every task row has, whatever its metric: the outputs, their length, decode time, utterances lost."""
    n = len(records)
    return {"n": n, "rejected": int(lost) + int(timing.get("rejected") or 0),
            "sec_per_utt": timing.get("sec_per_utt"),
            "mean_words": sum(count_words(r["hyp"] or "") for r in records) / n if n else None}


def score_task_row(records: list[dict], timing: dict, extract: Callable[[list[str], Sequence[str]], list],
                   judge: Judge | None, rubrics: Sequence[str], lost: int, **score_args
                   ) -> tuple[dict, np.ndarray | None]:
    """(results.json row, confusion matrix or None) of a decode whose timing.json names its task: the task's
    metric (module doc), with ``task`` and ``experiment`` kept for the task tables.  ``extract`` maps
    (outputs, labels) to labels; ``rubrics`` are the judge rubrics of the labelled tasks' rows."""
    task = timing["task"]
    metric, matrix = task_spec(task).metric, None
    if metric == "accuracy":
        labels = timing.get("labels")
        if not labels:
            raise ValueError(f"{timing.get('decode_dir')}: task '{task}' is scored on its closed label set, and "
                             "its timing.json has no labels")
        row, matrix = score_row(records, extract([r["hyp"] for r in records], labels), labels, timing,
                                data_rejected=lost, **score_args)
        if judge is not None and rubrics:
            row.update(judge_entry(judge, rubrics, records, labels))
    elif metric == "wer":
        row = {**output_row(records, timing, lost), **wer_scores(records)}
    elif judged_rubric(metric) in RUBRICS:
        rubric = judged_rubric(metric)
        row = {**output_row(records, timing, lost), **judge_entry(judge, [rubric], records, answers=True)}
        means = [normalise({k: row["judge"][k]}, rubric)[k] for k in RUBRICS[rubric].keys if k in row["judge"]]
        row["score"] = 100 * sum(means) / len(means) if means else None
    else:
        raise ValueError(f"task '{task}': unknown metric '{metric}'")
    return {"task": task, "experiment": timing.get("experiment"), **row}, matrix


def training_teacher(data_dir: Path | None) -> dict | None:
    """The teacher of the targets the models were trained on, as stage 3's record in the data dir says."""
    ledger = read_json(data_dir / RECORD) if data_dir is not None else None
    entry = next((r for r in (ledger or {}).get("stages", []) if r.get("stage") == "targets"), None)
    teacher = ((entry or {}).get("config") or {}).get("teacher")
    return {k: teacher[k] for k in ("backend", "model", "path", "seed") if k in teacher} if teacher else None


def provenance(cfg: DictConfig, record: dict, rows: dict, judge: Judge | None) -> dict:
    """What the tables were made from (results.json "provenance"): the stage record (code version, config,
    input digests) and, per table, the teacher of the training targets and each row's decode: model, device."""
    entries = {Path(e).name: e for e in cfg.test_sets}
    tables = {}
    for name, set_rows in rows.items():
        tables[name] = {"teacher": training_teacher(set_data_dir(cfg, entries[name])),
                        "rows": {row: {k: timing.get(k) for k in ("model_dir", "device", "target", "mode", "source",
                                                                  "decode_dir", "hyps_sha256")
                                       if timing.get(k) is not None}
                                 for row, (_, timing) in set_rows.items()}}
    return {**{k: record[k] for k in ("code", "key", "inputs", "started", "host")},
            "extract": cfg.score.extract, "judge": judge.name if judge is not None else None, "tables": tables,
            **({"note": cfg.score.note} if cfg.score.get("note") else {})}


@entry_point
def main(cfg: DictConfig) -> str:
    with stage_run(cfg, "score") as stage:
        return score(stage.cfg, stage.record)


def score(cfg: DictConfig, record: dict) -> str:
    opts = cfg.score
    rows = collect_rows(cfg)
    teacher = None
    if opts.extract == "llm":
        teacher_cfg = opts.extract_teacher if opts.extract_teacher is not None else cfg.teacher
        teacher = build_teacher(OmegaConf.to_container(teacher_cfg, resolve=True))
        if teacher.name == "offline":
            raise ValueError("score.extract=llm needs a language-model teacher (hf or openai), not the offline one")
    tables_spec = OmegaConf.to_container(opts.task_tables, resolve=True) if opts.get("task_tables") else {}
    check_task_tables(tables_spec, (opts.get("baselines") or {}).keys(), opts.get("judge_rubrics") or [])
    judged_tasks = any(judged_rubric(task_spec(timing["task"]).metric) for set_rows in rows.values()
                       for _, timing in set_rows.values() if timing.get("task"))
    judge = (build_judge(OmegaConf.to_container(cfg.judge, resolve=True))
             if opts.get("judge_rubrics") or judged_tasks else None)
    # the labelled tasks' rows get score.judge_rubrics, except the rubrics that are some task's own metric
    task_rubrics = [r for r in opts.get("judge_rubrics") or []
                    if r not in {judged_rubric(t.metric) for t in TASKS.values()}]
    results, confusions = {}, {}
    try:
        entries = {Path(e).name: e for e in cfg.test_sets}
        for test_set, set_rows in rows.items():
            results[test_set] = {}
            data_dir = set_data_dir(cfg, entries[test_set])
            has_dist = any("dist" in r for records, _ in set_rows.values() for r in records)
            gold = gold_distributions(cfg, entries[test_set]) if has_dist else None
            explicit = any(timing.get("target") == "c2ser_explicit" for _, timing in set_rows.values())
            attrs = utt_attributes(data_dir) if explicit else None
            if explicit and attrs is None:
                log.warning("%s: no utt2attr in %s: the explicit CoT's attribute words are not scored",
                            test_set, data_dir)
            lost = data_rejected(data_dir)
            for row, (records, timing) in set_rows.items():
                if timing.get("task"):
                    results[test_set][row], matrix = score_task_row(
                        records, timing, lambda texts, labels: extract_labels(texts, opts.extract, teacher, labels),
                        judge, task_rubrics, lost, gold_dists=gold, ece_bins=opts.get("ece_bins", 15), attrs=attrs,
                        dist_wanted=has_dist)
                    if matrix is not None:
                        confusions[(test_set, row)] = matrix
                    continue
                labels = timing.get("labels") or recipe_labels(cfg.corpus)  # the model's classes
                preds = extract_labels([r["hyp"] for r in records], opts.extract, teacher, labels)
                results[test_set][row], matrix = score_row(
                    records, preds, labels, timing, gold, ece_bins=opts.get("ece_bins", 15), attrs=attrs,
                    data_rejected=lost, dist_wanted=has_dist)
                if matrix is not None:
                    confusions[(test_set, row)] = matrix
                if opts.get("judge_rubrics") and row != "attributes":  # the classifier's outputs are bare labels
                    results[test_set][row].update(judge_entry(judge, opts.judge_rubrics, records))
    finally:
        for backend in (teacher, judge):
            if backend is not None and hasattr(backend, "close"):
                backend.close()
    mine = (cfg.corpus.get("published") or {}).get(cfg.system)
    published = OmegaConf.to_container(mine, resolve=True) if mine else {}
    made_of = provenance(cfg, record, rows, judge)
    earlier = keep_earlier(Path(opts.exp_dir), results, made_of)
    if earlier:
        log.info("kept in the report, scored earlier and their decodes unchanged: %s", ", ".join(earlier))
    tables = task_table_values(results, tables_spec, left_out_baselines(cfg), lenient=earlier)
    markdown = write_results(opts.exp_dir, results, confusions, made_of,
                             {name: refs for name, refs in published.items() if name in results},
                             extra={"task_tables": tables} if tables else None,
                             appendix=task_tables_markdown(tables, results, opts.get("note")))
    print(markdown, end="")
    log.info("wrote %s", Path(opts.exp_dir) / "results.md")
    return markdown


if __name__ == "__main__":
    main()
