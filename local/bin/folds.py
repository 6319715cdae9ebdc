"""The mean ± std over folds of stage 10's tables (EmoBox reports every corpus so), and the folds a corpus has.

    python -m local.bin.folds --list iemocap                       # 1 2 3 4 5 (corpus.folds)
    python -m local.bin.folds --out exp/c2ser exp/fold*/c2ser/results.json

``run.sh --folds "1 2 3 4 5"`` (or ``all``) calls both: it runs every stage of each fold in its own
``<root>/fold<k>/`` and then writes ``<exp_root>/<system>/folds.{json,md}``.  A fold whose results are
missing is an error, not a smaller mean: a mean over four of five folds reads as the five-fold number.
The std is the sample standard deviation (n - 1) over folds.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from local.eval.report import dropped_notes, published_lines
from local.utils.atomic import write_text_atomic

METRICS = (("ua", "UA", 100), ("wa", "WA", 100), ("f1", "F1", 100),
           ("js", "JS (bits)", 1), ("bc", "BC", 1), ("brier", "Brier", 1), ("ece", "ECE", 1))


def list_folds(corpus: str) -> list[str]:
    """The fold names of a corpus config (run from its recipe dir, whose conf/ holds it)."""
    from local.utils.hydra import compose

    cfg = compose([f"corpus={corpus}"], recipe_conf=Path.cwd() / "conf")
    if not cfg.corpus.get("folds"):
        raise ValueError(f"corpus {corpus} has no corpus.folds: it has one split, run it without --folds")
    return [str(k) for k in cfg.corpus.folds]


def aggregate(tables: list[dict]) -> dict:
    """{set: {row: {metric: {"mean", "std", "folds"}, "n": total, "dropped": {...}}}} over the folds' tables,
    for the sets and rows that every fold has (the others are named in "missing")."""
    out: dict = {}
    missing = []
    for name in tables[0]:
        if not all(name in t for t in tables):
            missing.append(name)
            continue
        out[name] = {}
        for row in tables[0][name]:
            rows = [t[name].get(row) for t in tables]
            if any(r is None for r in rows):
                missing.append(f"{name}/{row}")
                continue
            entry: dict = {"n": sum(r["n"] for r in rows), "rejected": sum(r.get("rejected") or 0 for r in rows)}
            for key, _, _ in METRICS:
                values = [r.get(key) for r in rows]
                if all(v is not None for v in values):
                    entry[key] = {"mean": float(np.mean(values)),
                                  "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                                  "folds": [float(v) for v in values]}
            dropped: dict = {}
            for r in rows:
                for label, n in (r.get("dropped") or {}).items():
                    dropped[label] = dropped.get(label, 0) + n
            if dropped:
                entry["dropped"] = dict(sorted(dropped.items()))
                entry["labels"] = rows[0].get("labels") or []
            out[name][row] = entry
    return {"tables": out, "missing": missing}


def markdown(result: dict, folds: list[str], teacher_offline: bool, notes: list[str],
             published: dict | None = None) -> str:
    parts = []
    for name, rows in result["tables"].items():
        refs = (published or {}).get(name) or []
        keys = [(k, title, scale) for k, title, scale in METRICS if any(k in r for r in [*rows.values(), *refs])]
        header = ["system", *(title for _, title, _ in keys), "UA per fold", "n", "rejected"]
        lines = [f"### {name}: mean ± std over folds {', '.join(folds)}", "", *(f"**{n}**\n" for n in notes)]
        if teacher_offline:
            lines += ["Trained on targets of the offline teacher (a template stand-in for an LLM teacher).", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        for row, entry in rows.items():
            cells = [row]
            for key, _, scale in keys:
                m = entry.get(key)
                digits = 2 if scale == 100 else 4
                cells.append("–" if m is None else f"{scale * m['mean']:.{digits}f} ± {scale * m['std']:.{digits}f}")
            ua = entry.get("ua")
            cells += [" / ".join(f"{100 * v:.1f}" for v in ua["folds"]) if ua else "–",
                      str(entry["n"]), str(entry["rejected"])]
            lines.append("| " + " | ".join(cells) + " |")
        ref_lines, ref_notes = published_lines(header, refs)
        lines += [*ref_lines, "", "Columns as in each fold's results.md; ± is the sample standard deviation over "
                                  "folds; n and rejected are totals over folds.", *ref_notes]
        lines += dropped_notes(rows)
        parts.append("\n".join(lines))
    if result["missing"]:
        parts.append("Not in every fold, so not averaged: " + ", ".join(result["missing"]) + ".")
    return "\n\n".join(parts) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", metavar="CORPUS", help="print the corpus' folds (corpus.folds) and exit")
    parser.add_argument("--out", help="write folds.json and folds.md here")
    parser.add_argument("results", nargs="*", help="each fold's results.json (stage 10), in fold order")
    args = parser.parse_args(argv)
    if args.list:
        print(" ".join(list_folds(args.list)))
        return 0
    if not args.out or not args.results:
        parser.error("give --out DIR and the folds' results.json files (or --list CORPUS)")
    documents = []
    for path in map(Path, args.results):
        if not path.is_file():
            parser.exit(1, f"{path}: no results: run that fold's stage 10 first\n")
        documents.append(json.loads(path.read_text(encoding="utf-8")))
    folds = [p.parent.parent.name.removeprefix("fold") for p in map(Path, args.results)]
    result = aggregate([d["tables"] for d in documents])
    teachers = [t.get("teacher") or {} for d in documents
                for t in ((d.get("provenance") or {}).get("tables") or {}).values()]
    notes = list(dict.fromkeys(d["provenance"]["note"] for d in documents if (d.get("provenance") or {}).get("note")))
    md = markdown(result, folds, any(t.get("backend") == "offline" for t in teachers), notes,
                  documents[0].get("published"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "folds.json", json.dumps({"folds": folds, "results": [str(p) for p in args.results],
                                                      **result}, indent=2) + "\n")
    write_text_atomic(out / "folds.md", md)
    print(md, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
