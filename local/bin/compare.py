"""Paired bootstrap between two decodes of one test set: UA (and mean JS, with hyp_dist) of B minus A.

    python -m local.bin.compare exp/c2ser/decode_test_implicit exp/c2ser/decode_test_explicit
    python -m local.bin.compare A B --resamples 2000 --seed 0 --ci 0.95 --json cmp.json

A user tool beside stage 10, not a stage: it reads two decode dirs (stage 9) and prints a markdown
table; ``--json`` also writes the numbers (local/eval/bootstrap.py says how they are computed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from local.eval.bootstrap import compare_decodes, comparison_markdown
from local.utils.atomic import write_text_atomic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m local.bin.compare", description=__doc__.split("\n")[0])
    parser.add_argument("decode_a", type=Path, help="decode dir of system A (the reference)")
    parser.add_argument("decode_b", type=Path, help="decode dir of system B, same test set")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of numpy's default_rng (default 0)")
    parser.add_argument("--ci", type=float, default=0.95, help="coverage of the percentile interval (default 0.95)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = compare_decodes(args.decode_a, args.decode_b, args.resamples, args.seed, args.ci)
    print(comparison_markdown(result), end="")
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"compare: {e}")
