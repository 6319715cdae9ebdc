"""Stage 10: score every decode of the system (and the configured baselines) and print the tables.

    python -m local.bin.score
    python -m local.bin.score score.extract=llm teacher=openai teacher.model=qwen2.5-14b

Writes ``<exp_dir>/results.json``, ``results.md`` and ``confusion_<set>_<row>.png``;
the attribute baseline's predictions go to ``<exp_dir>/attr_baseline/<set>/``.  Decode dirs with a
``hyp_dist`` (``decode.dist=true``) are also scored against the test set's ``utt2dist``: JS (log base 2),
BC, Brier, ECE and arg-max accuracy.  ``score.judge_rubrics`` adds the judge's mean scores of each row
(``judge=offline|hf|openai``; CogAudio's empathy 1-4 in experiment/cogaudio.yaml).
"""
from __future__ import annotations

import logging
from functools import cache
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from local.data.kaldi import parse_dist, read_table
from local.data.labels import EMOTIONS
from local.eval.attr_baseline import AttributeBaseline
from local.eval.decode import find_decode_dirs, read_decode_dir, resolve_test_set, write_decode_dir
from local.eval.extract import extract_labels
from local.eval.judge import JudgeItem, build_judge
from local.eval.report import judge_row, score_row, write_results
from local.reasoning.teacher import build_teacher
from local.utils.hydra import entry_point

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
    write_decode_dir(Path(cfg.score.exp_dir) / "attr_baseline" / name, records, {**timing, "set": name})
    rows["attributes"] = (records, timing)


def gold_distributions(cfg: DictConfig, entry: str) -> dict[str, dict[str, float]] | None:
    """The test set's soft labels (utt2dist), None when its data dir has none."""
    try:
        path = resolve_test_set(entry, cfg.data_root, cfg.dump_root, source="data").data_dir / "utt2dist"
    except FileNotFoundError:
        return None
    if not path.is_file():
        return None
    gold = {}
    for utt, value in read_table(path).items():
        try:
            gold[utt] = parse_dist(value)
        except ValueError as e:
            raise ValueError(f"{path}: '{utt}': {e}") from None
    return gold


def collect_rows(cfg: DictConfig) -> dict[str, dict[str, tuple[list[dict], dict]]]:
    """{test set: {row: (records, timing)}}: the system's decodes, the baselines' and the attribute classifier's."""
    opts = cfg.score
    decodes = find_decode_dirs(opts.exp_dir)
    rows: dict[str, dict[str, tuple[list[dict], dict]]] = {}
    trained = cache(lambda: AttributeBaseline(opts.attr_features, C=opts.attr_C, seed=cfg.seed)
                    .fit(Path(cfg.data_root) / cfg.train_set))
    for entry in cfg.test_sets:
        name = Path(entry).name
        rows[name] = {mode: read_decode_dir(d) for mode, d in sorted(decodes.get(name, {}).items())}
        for row, template in (opts.baselines or {}).items():
            if row in rows[name]:
                raise ValueError(f"score.baselines: row name '{row}' is also a decode mode of {opts.exp_dir}")
            decode_dir = Path(str(template).replace("{set}", name))
            if (decode_dir / "hyps.jsonl").is_file():
                rows[name][row] = read_decode_dir(decode_dir)
            else:
                log.info("%s: baseline '%s' has no %s, left out", name, row, decode_dir / "hyps.jsonl")
        if opts.attributes:
            attribute_row(trained, cfg, entry, rows[name])
        if not rows[name]:
            log.warning("%s: nothing to score (no decode_%s_* in %s)", name, name, opts.exp_dir)
            del rows[name]
    return rows


@entry_point
def main(cfg: DictConfig) -> str:
    opts = cfg.score
    rows = collect_rows(cfg)
    teacher = None
    if opts.extract == "llm":
        teacher_cfg = opts.extract_teacher if opts.extract_teacher is not None else cfg.teacher
        teacher = build_teacher(OmegaConf.to_container(teacher_cfg, resolve=True))
        if teacher.name == "offline":
            raise ValueError("score.extract=llm needs a language-model teacher (hf or openai), not the offline one")
    judge = build_judge(OmegaConf.to_container(cfg.judge, resolve=True)) if opts.get("judge_rubrics") else None
    results, confusions = {}, {}
    try:
        entries = {Path(e).name: e for e in cfg.test_sets}
        for test_set, set_rows in rows.items():
            results[test_set] = {}
            has_dist = any("dist" in r for records, _ in set_rows.values() for r in records)
            gold = gold_distributions(cfg, entries[test_set]) if has_dist else None
            for row, (records, timing) in set_rows.items():
                preds = extract_labels([r["hyp"] for r in records], opts.extract, teacher)
                results[test_set][row], matrix = score_row(records, preds, EMOTIONS, timing, gold,
                                                           ece_bins=opts.get("ece_bins", 15))
                if matrix is not None:
                    confusions[(test_set, row)] = matrix
                if judge is not None and row != "attributes":  # the classifier's outputs are bare labels
                    items = [JudgeItem(utt=r["utt"], output=r["hyp"], label=r.get("label") or "",
                                       text=r.get("text") or "") for r in records]
                    results[test_set][row]["judge"] = {
                        k: v for rubric in opts.judge_rubrics
                        for k, v in judge_row(judge.score(items, rubric)).items()}
    finally:
        for backend in (teacher, judge):
            if backend is not None and hasattr(backend, "close"):
                backend.close()
    markdown = write_results(opts.exp_dir, results, confusions, EMOTIONS)
    print(markdown, end="")
    log.info("wrote %s", Path(opts.exp_dir) / "results.md")
    return markdown


if __name__ == "__main__":
    main()
