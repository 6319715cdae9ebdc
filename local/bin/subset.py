"""A subset of a data dir, as Kaldi's utils/subset_data_dir.sh makes one: for quick evaluations.

  python -m local.bin.subset data/test data/test_q --every 4        # every 4th utterance (sorted ids)
  python -m local.bin.subset data/test data/test_500 --first 500
  python -m local.bin.subset data/test data/test_spk07 --spk-list spk07.txt
  python -m local.bin.subset data/test data/test_mine --utt-list utts.txt

Every table is cut to the chosen utterances; targets.jsonl keeps their records
only; other files (attr_stats.json, a README) are copied as they are, but not
the source's stage records (provenance.json): they describe another dir.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

from local.data.kaldi import UTT_TABLES, DataDir
from local.data.shards import read_targets
from local.utils.atomic import write_text_atomic
from local.utils.digest import RECORD


def read_list(path: str) -> set[str]:
    return {line.split()[0] for line in Path(path).read_text().splitlines() if line.strip()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src")
    parser.add_argument("dst")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--every", type=int, help="keep every N-th utterance")
    how.add_argument("--first", type=int, help="keep the first N utterances")
    how.add_argument("--utt-list", help="keep the utterances listed (first column)")
    how.add_argument("--spk-list", help="keep the utterances of the speakers listed")
    args = parser.parse_args(argv)
    src, dst = Path(args.src), Path(args.dst)
    if src.resolve() == dst.resolve():
        parser.error("the subset must go to another dir")
    data = DataDir.load(src)
    utts = data.utts
    if args.every:
        keep = utts[::args.every]
    elif args.first:
        keep = utts[:args.first]
    elif args.utt_list:
        wanted = read_list(args.utt_list)
        keep = [u for u in utts if u in wanted]
    else:
        speakers = read_list(args.spk_list)
        keep = [u for u in utts if data["utt2spk"][u] in speakers]
    if not keep:
        print(f"error: no utterance of {src} is selected", file=sys.stderr)
        return 1
    data.subset(keep).save(dst)
    for item in src.iterdir():
        if item.name == "targets.jsonl":
            records = read_targets(item)
            write_text_atomic(dst / item.name, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                      for u in keep for r in records.get(u, [])))
        elif item.is_file() and item.name not in {*UTT_TABLES, "spk2utt", "rejected", RECORD}:
            shutil.copy2(item, dst / item.name)
    print(f"{dst}: {len(keep)} of {len(utts)} utterances")
    return 0


if __name__ == "__main__":
    sys.exit(main())
