"""Check data dirs the way Kaldi's validate_data_dir.sh does (see local/data/kaldi.py).

  python -m local.bin.validate data/train [data/dev ...]           # fails at the first problem
  python -m local.bin.validate --report data/train                 # says what stage 1 will repair
  python -m local.bin.validate --no-audio data/train               # skip the audio file checks
  python -m local.bin.validate --any-labels data/train             # a corpus' own labels (before stage 1)
"""
import argparse
import sys

from local.data.kaldi import DataDirError, validate_data_dir
from local.data.labels import EMOTIONS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("--report", action="store_true", help="print the problem but exit 0")
    parser.add_argument("--no-audio", action="store_true", help="do not check that audio files exist")
    parser.add_argument("--any-labels", action="store_true",
                        help="accept any label name (stage 0 writes the corpus' own; stage 1 maps them)")
    args = parser.parse_args(argv)
    status = 0
    for d in args.dirs:
        try:
            data = validate_data_dir(d, labels=None if args.any_labels else EMOTIONS, check_audio=not args.no_audio)
            print(f"{d}: OK ({len(data)} utterances)")
        except DataDirError as e:
            print(f"{'note' if args.report else 'error'}: {e}", file=sys.stderr)
            status = 0 if args.report else 1
    return status


if __name__ == "__main__":
    sys.exit(main())
