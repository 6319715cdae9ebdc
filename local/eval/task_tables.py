"""Stage 10: paper-style pivot tables of multi-task systems, one row per experiment and one column per score.

The per-set tables of :mod:`local.eval.report` have one row per decode; a paper
that trains one model on several tasks prints one row per *model* instead,
its columns the tasks' scores (AudioLLM-Reasoning Tables 2, 3, 4, 7).  Rows of
results.json that carry ``task`` and ``experiment`` (stage 10 adds both to the
decodes whose timing.json names a task) are pivoted into such tables, as
``score.task_tables`` asks::

    task_tables:
      <name>:
        title: <the heading>
        experiments: [main, <entry of score.baselines>, ...]   # main: the system's own decodes
        columns: [<column>, ...]                                # from COLUMNS

Each table is printed once per test set that has task rows, under the per-set
tables, with a line naming what every column is.  A judged column names the
judge's backend in its header (``SQA[offline]``) and the legend says when that
is the offline rule stand-in: its numbers are not judge scores.

Column vocabulary (:data:`COLUMNS`); every score is in %, ``–`` where the
experiment has no row of that task:

==================  ================================================================================
``er`` / ``sr``     accuracy of the ``er`` / ``sr`` row: WA, the share of utterances whose label (read
                    from the output by the label extractor) is the gold one.  The paper's binary judge
                    scores each utterance, so the comparable figure is per utterance, not UA.
``emotion_avg``     mean of ``er`` and ``sr`` (the paper's emotion "Avg")
``sqa``             the ``sqa`` row's judge score, 0-5 mean x 20 (AudioBench)
``asr_wer``         WER of the ``asr`` row (corpus-level, see :mod:`local.eval.asr_metrics`); lower is better
``overall``         mean of ``er``, ``sr`` and ``sqa``: the paper's "Overall Avg" is the mean of the score
                    columns, not of the group averages, and leaves WER out
``quotation``       share of outputs with at least one double-quoted span (Table 4), mean of the ``er`` and
                    ``sr`` rows' rates; ``quotation_er`` / ``quotation_sr`` one task's
``groundedness``    the ``grounded`` rubric's groundedness 0-2 x 50, over the outputs that quote; mean of
                    ``er`` and ``sr``, or ``groundedness_er`` / ``groundedness_sr``
``relevance``       the same for relevance
==================  ================================================================================

A mean is left empty (``–``) unless every score it averages is there, so that
an average over fewer tasks never sits beside full ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from local.eval.judge import normalise

MAIN = "main"  # the experiment name of the system's own decodes
TableRows = Mapping[str, Mapping]  # task -> results.json row of one experiment on one test set


def _mean(values: Sequence[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def _accuracy(task: str) -> Callable[[TableRows], float | None]:
    def value(rows: TableRows) -> float | None:
        wa = (rows.get(task) or {}).get("wa")
        return None if wa is None else 100 * wa
    return value


def _score(task: str) -> Callable[[TableRows], float | None]:
    return lambda rows: (rows.get(task) or {}).get("score")


def _wer(rows: TableRows) -> float | None:
    wer = (rows.get("asr") or {}).get("wer")
    return None if wer is None else 100 * wer


def _quotation(task: str) -> Callable[[TableRows], float | None]:
    def value(rows: TableRows) -> float | None:
        rate = ((rows.get(task) or {}).get("quotes") or {}).get("rate")
        return None if rate is None else 100 * rate
    return value


def _judged(task: str, key: str, rubric: str) -> Callable[[TableRows], float | None]:
    def value(rows: TableRows) -> float | None:
        mean = ((rows.get(task) or {}).get("judge") or {}).get(key)
        return None if mean is None else 100 * normalise({key: mean}, rubric)[key]
    return value


def _avg(*parts: Callable[[TableRows], float | None]) -> Callable[[TableRows], float | None]:
    return lambda rows: _mean([part(rows) for part in parts])


@dataclass(frozen=True)
class Column:
    """One column of the vocabulary: its header, the legend's words for it, how its value is read from an
    experiment's rows, and the judge behind it (rubric, the tasks whose rows it scored) when judged."""

    header: str
    legend: str
    value: Callable[[TableRows], float | None]
    rubric: str | None = None
    judged_tasks: tuple[str, ...] = ()

    @property
    def stand_in(self) -> str:
        """What the offline judge does in place of this column's judge (the legend says it)."""
        return STAND_INS.get(self.rubric or "", "")


STAND_INS = {"sqa": "SQA: 5 x the token-overlap F1 of answer and reference answer",
             "grounded": "groundedness / relevance: quotes matched against the transcript, the label read by rules"}


def _vocabulary() -> dict[str, Column]:
    er, sr, sqa = _accuracy("er"), _accuracy("sr"), _score("sqa")
    columns = {
        "er": Column("ER", "ER = emotion accuracy (WA: % of utterances whose extracted label is the gold one)", er),
        "sr": Column("SR", "SR = sentiment accuracy (WA %, positive / negative / neutral)", sr),
        "emotion_avg": Column("ER/SR avg", "ER/SR avg = mean of ER and SR", _avg(er, sr)),
        "sqa": Column("SQA", "SQA = mean 0-5 judge score x 20 (AudioBench)", sqa, "sqa", ("sqa",)),
        "asr_wer": Column("ASR WER %", "ASR WER % = corpus word error rate (edits / reference tokens, each CJK "
                          "character a token), lower is better", _wer),
        "overall": Column("Overall", "Overall = mean of ER, SR and SQA (the score columns; WER left out)",
                          _avg(er, sr, sqa), "sqa", ("sqa",)),
        "quotation": Column("Quotation", "Quotation = % of ER and SR outputs quoting a span (mean of the two)",
                            _avg(_quotation("er"), _quotation("sr"))),
    }
    for task in ("er", "sr"):
        columns[f"quotation_{task}"] = Column(f"Quotation {task.upper()}", f"Quotation {task.upper()} = % of "
                                              f"{task.upper()} outputs quoting a span", _quotation(task))
    for key in ("groundedness", "relevance"):
        name = key.capitalize()
        columns[key] = Column(name, f"{name} = mean 0-2 judge score x 50 over quoting ER and SR outputs (mean "
                              "of the two)", _avg(_judged("er", key, "grounded"), _judged("sr", key, "grounded")),
                              "grounded", ("er", "sr"))
        for task in ("er", "sr"):
            columns[f"{key}_{task}"] = Column(
                f"{name} {task.upper()}", f"{name} {task.upper()} = mean 0-2 judge score x 50 over quoting "
                f"{task.upper()} outputs", _judged(task, key, "grounded"), "grounded", (task,))
    return columns


COLUMNS: dict[str, Column] = _vocabulary()


def check_task_tables(spec: Mapping[str, Mapping], experiments: Iterable[str], rubrics: Iterable[str]) -> None:
    """Fail before anything is scored on a table that cannot be made: a column outside the vocabulary, an
    experiment that is neither ``main`` nor an entry of ``score.baselines``, a judged column whose rubric
    stage 10 does not run (``grounded`` must be in ``score.judge_rubrics``; ``sqa`` rows are always judged)."""
    known, rubrics = {MAIN, *experiments}, {*rubrics, "sqa"}
    for name, table in (spec or {}).items():
        where = f"score.task_tables.{name}"
        if not isinstance(table.get("title"), str) or not table.get("experiments") or not table.get("columns"):
            raise ValueError(f"{where}: needs title (a string), experiments and columns (non-empty lists)")
        unknown = [c for c in table["columns"] if c not in COLUMNS]
        if unknown:
            raise ValueError(f"{where}: unknown column(s) {unknown} (known: {', '.join(COLUMNS)})")
        strangers = [e for e in table["experiments"] if e not in known]
        if strangers:
            raise ValueError(f"{where}: experiment(s) {strangers} are neither '{MAIN}' nor entries of "
                             f"score.baselines ({', '.join(sorted(known - {MAIN})) or 'none'})")
        unjudged = [c for c in table["columns"] if COLUMNS[c].rubric and COLUMNS[c].rubric not in rubrics]
        if unjudged:
            raise ValueError(f"{where}: column(s) {unjudged} need the judge rubric "
                             f"'{COLUMNS[unjudged[0]].rubric}' in score.judge_rubrics")


def experiment_rows(rows: Mapping[str, Mapping], experiment: str) -> dict[str, Mapping]:
    """{task: row} of one experiment on one test set; two rows of one task would make a cell ambiguous."""
    out: dict[str, Mapping] = {}
    names: dict[str, str] = {}
    for name, row in rows.items():
        if row.get("experiment") != experiment or not row.get("task"):
            continue
        if row["task"] in out:
            raise ValueError(f"experiment '{experiment}': rows '{names[row['task']]}' and '{name}' are both of "
                             f"task '{row['task']}'; a table cell can show one")
        out[row["task"]], names[row["task"]] = row, name
    return out


def task_table_values(results: Mapping[str, Mapping[str, Mapping]], spec: Mapping[str, Mapping],
                      left_out: Iterable[str] = (), lenient: Iterable[str] = ()) -> dict:
    """{table: {"title", "columns", "left_out", "sets": {set: {experiment: {column: value}}}}} over the test
    sets that have task rows.  An experiment without task rows on such a set is an error naming it, unless
    it is among ``left_out`` (an entry of score.baselines set to null, or a baseline run.sh did not train):
    then the table leaves it out and says so.  ``lenient`` sets were scored by an earlier stage 10 (kept
    while their decodes are unchanged), perhaps before an experiment was added: it is left out of those."""
    left_out, lenient = set(left_out), set(lenient)
    task_sets = [s for s, rows in results.items() if any(row.get("task") for row in rows.values())]
    out = {}
    for name, table in (spec or {}).items():
        sets: dict[str, dict] = {}
        for test_set in task_sets:
            sets[test_set] = {}
            for experiment in table["experiments"]:
                rows = experiment_rows(results[test_set], experiment)
                if rows:
                    sets[test_set][experiment] = {c: COLUMNS[c].value(rows) for c in table["columns"]}
                elif experiment not in left_out and test_set not in lenient:
                    raise ValueError(f"score.task_tables.{name}: experiment '{experiment}' has no rows with a task "
                                     f"on test set {test_set} (decodes whose timing.json names no task, or a "
                                     "name that is no experiment of this run)")
        out[name] = {"title": table["title"], "columns": list(table["columns"]),
                     "left_out": [e for e in table["experiments"] if e in left_out], "sets": sets}
    return out


def _backends(results: Mapping[str, Mapping], experiments: Iterable[str], column: Column) -> list[str]:
    """The judges behind a judged column's cells on one test set, in order of appearance."""
    found = []
    for experiment in experiments:
        rows = experiment_rows(results, experiment)
        for task in column.judged_tasks:
            backend = ((rows.get(task) or {}).get("judge") or {}).get("backend")
            if backend and backend not in found:
                found.append(backend)
    return found


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def task_tables_markdown(values: Mapping[str, Mapping], results: Mapping[str, Mapping[str, Mapping]],
                         note: str | None = None) -> str:
    """The tables of :func:`task_table_values`, each per test set, with its legend under it; "" for none."""
    parts = []
    for table in values.values():
        for test_set, cells in table["sets"].items():
            columns = [COLUMNS[c] for c in table["columns"]]
            headers, stand_ins = [], []
            for column in columns:
                backends = _backends(results[test_set], cells, column) if column.rubric else []
                if "offline" in backends and column.stand_in not in stand_ins:
                    stand_ins.append(column.stand_in)
                headers.append(column.header + (f"[{','.join(backends)}]" if backends else ""))
            lines = [f"### {table['title']}: {test_set}", "", *([f"**{note}**", ""] if note else []),
                     "| experiment | " + " | ".join(headers) + " |",
                     "|" + "|".join(["---"] + ["---:"] * len(headers)) + "|"]
            lines += ["| " + " | ".join([experiment, *(_cell(row[c]) for c in table["columns"])]) + " |"
                      for experiment, row in cells.items()]
            legend = [f"{MAIN} = this system's own decodes, another name the entry of score.baselines",
                      *(column.legend for column in columns)]
            if stand_ins:
                legend.append(f"[offline] = the offline judge, a rule stand-in ({'; '.join(stand_ins)}), not a "
                              "model judge: its numbers are not judge scores")
            lines += ["", "Columns: " + "; ".join(legend) + "; – = no score (no row of that task)."]
            if table["left_out"]:
                lines += ["", f"- not in this run (set to null in score.baselines, or not trained by run.sh): "
                              f"{', '.join(table['left_out'])}"]
            parts.append("\n".join(lines))
    return "\n\n".join(parts) + ("\n" if parts else "")
