"""Run a model on your own audio: files, folders, wav.scp lists, long recordings.

    emoreason-infer --model egs/mini_lime/exp/c2ser/distill/model a.wav b.flac recordings/
    find calls -name '*.m4a' | emoreason-infer --model MODEL - --out calls.jsonl
    emoreason-infer --model emotion2vec_plus_large --format table meeting.mp3

One JSON line per utterance (input, start, end, label, dist, text, seconds), or per input that could not be
used (input, error).  The exit status is 0 when every input gave a result, 1 when some did not (their lines
say why), 2 for a bad command line or a model that cannot be loaded.  What ``--model`` can be:
local/eval/predictors.py; how inputs are read and long ones cut: local/eval/infer.py.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from local.data.segments import Segmenter, read_segments
from local.eval.infer import MAX_DURATION, SPLITS, infer, list_inputs, table
from local.eval.predictors import load_predictor

log = logging.getLogger("infer")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """What to run and how it hears: the options this command and the web demo (local.bin.demo) share."""
    p.add_argument("--model", required=True,
                   help="a recipe model dir, an export, the C²SER release, emotion2vec+ or Qwen2-Audio "
                        "(local/eval/predictors.py)")
    p.add_argument("--prompt", default=None,
                   help="implicit | explicit | a target type the model was trained on (default: implicit when the "
                        "model was trained on it, else its only target type)")
    p.add_argument("--max_seconds", type=float, default=30.0, help="longest utterance the model hears at once")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emoreason-infer", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="audio files, folders, wav.scp files, or - (stdin)")
    add_model_options(p)
    p.add_argument("--out", help="write the JSON lines here (atomically, at the end) instead of stdout")
    p.add_argument("--format", choices=("jsonl", "table"), default="jsonl", help="JSON lines, or a table for people")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch_size", type=int, default=8, help="utterances per model call")
    p.add_argument("--split", choices=SPLITS, default="auto",
                   help="auto: cut inputs longer than --max_seconds by voice activity; always; never")
    p.add_argument("--vad", choices=("auto", "silero", "energy"), default="auto",
                   help="voice activity detector (auto: Silero when installed, else energy)")
    p.add_argument("--segments", help="a Kaldi segments file (recording id = the input's name) instead of the VAD")
    p.add_argument("--max_duration", type=float, default=MAX_DURATION, help="refuse longer inputs (seconds)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s (%(name)s) %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    try:
        segments = read_segments(args.segments) if args.segments else None
        predictor = load_predictor(args.model, args.device, args.prompt)
        segmenter = Segmenter(method=args.vad, max_seconds=args.max_seconds)
    except (ValueError, FileNotFoundError) as e:
        print(f"emoreason-infer: {e}", file=sys.stderr)
        return 2
    log.info("%s", predictor.describe())
    inputs = list_inputs(args.paths)
    records = infer(predictor, inputs, segmenter=segmenter, split=args.split, max_seconds=args.max_seconds,
                    segments=segments, batch_size=args.batch_size, max_duration=args.max_duration,
                    progress=not args.quiet)
    out = open(f"{args.out}.tmp", "w", encoding="utf-8") if args.out else sys.stdout
    failed, kept = set(), []
    for record in records:
        if "error" in record:
            failed.add(record["input"])
            log.warning("%s", record["error"])
        if args.format == "table":
            kept.append(record)
        else:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
    if kept:
        out.write(table(kept) + "\n")
    if args.out:
        out.close()
        os.replace(f"{args.out}.tmp", args.out)
    if failed:
        log.warning("%d of %d inputs failed: %s", len(failed), len(inputs), ", ".join(sorted(failed)[:5]))
    return 1 if failed else 0


def console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console()
