"""Print what the data stages produced, as a table: the "results" of stages 0-4.

  python -m local.bin.summary --data_root data --dump_root dump train dev test

"unmeasured" counts the utterances a test set kept although stage 2 could not
measure all their attributes (an ``unknown`` level), per attribute: those are
scored, but get no target type that states the missing level.
"""
import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from local.data.kaldi import DataDir, parse_kv
from local.data.labels import in_core_order

UNKNOWN = "unknown"  # stage 2's level of what it could not measure (local.data.attributes.UNKNOWN, without torch)


def summarise(data_root: Path, dump_root: Path, sets: list[str]) -> str:
    rows = []
    dirs = {name: DataDir.load(data_root / name) for name in sets}
    present = {e for data in dirs.values() for e in data.tables.get("utt2emo", {}).values()}
    labels = in_core_order(present)  # the recipe's set, as the sets hold it
    for name, data in dirs.items():
        durs = [float(d) for d in data.tables.get("utt2dur", {}).values()]
        emo = Counter(data.tables.get("utt2emo", {}).values())
        sub = Counter(data.tables.get("utt2subset", {}).values())
        lang = Counter(data.tables.get("utt2lang", {}).values())
        targets = Counter()
        tpath = data_root / name / "targets.jsonl"
        if tpath.exists():
            with open(tpath, encoding="utf-8") as f:
                targets.update(json.loads(line)["type"] for line in f)
        attrs = [parse_kv(v) for v in data.tables.get("utt2attr", {}).values()]
        levels = Counter(a.get("pitch", "?") for a in attrs)
        unknown = Counter(k for a in attrs for k, v in a.items() if v == UNKNOWN)
        unmeasured = sum(UNKNOWN in a.values() for a in attrs)
        manifest = dump_root / name / "shards" / "manifest.json"
        shards = len(json.loads(manifest.read_text())["shards"]) if manifest.exists() else 0
        rows.append([
            name, str(len(data)), str(len(data.rejected)), f"{sum(durs) / 3600:.2f}",
            str(len(set(data["utt2spk"].values()))), str(len(set(data.tables.get("text", {}).values()))),
            " ".join(str(emo.get(e, 0)) for e in labels),
            " ".join(f"{k}:{v}" for k, v in sorted(sub.items())) or "-",
            " ".join(f"{k}:{v}" for k, v in sorted(lang.items())) or "-",
            " ".join(f"{k}:{levels[k]}" for k in ("Low", "Medium", "High", UNKNOWN) if levels[k]) or "-",
            f"{unmeasured} (" + " ".join(f"{k}:{n}" for k, n in sorted(unknown.items())) + ")" if unmeasured
            else "0" if attrs else "-",
            f"{len(targets)} types, {sum(targets.values())}" if targets else "-",
            str(shards),
        ])
    header = ["set", "utts", "rejected", "hours", "spk", "texts", "per label (" + " ".join(e[:3] for e in labels) + ")",
              "subsets", "lang", "pitch levels", "unmeasured", "targets", "shards"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", default="data")
    parser.add_argument("--dump_root", default="dump")
    parser.add_argument("sets", nargs="+")
    args = parser.parse_args(argv)
    print(summarise(Path(args.data_root), Path(args.dump_root), args.sets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
