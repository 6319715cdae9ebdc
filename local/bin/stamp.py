"""Is a stage up to date?  run.sh asks before each stage (see local/bin/stages.py).

    python -m local.bin.stamp sft experiment=c2ser recipe=mini_lime sft.trainer.lr=1e-3

takes the stage's name and the Hydra overrides the stage would get, and exits
0 when the stage's record matches (it prints nothing), 1 when the stage must
run (it prints why, one reason a line), 2 when the config does not compose.
It imports no torch, so asking costs about half a second.
"""
from __future__ import annotations

import sys
from pathlib import Path

from local.bin.stages import STAGES, check
from local.utils.hydra import compose


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in STAGES:
        print(f"usage: python -m local.bin.stamp STAGE [overrides...]; STAGE is one of {', '.join(STAGES)}",
              file=sys.stderr)
        return 2
    recipe_conf = Path("conf") if Path("conf").is_dir() else None
    try:
        cfg = compose(argv[1:], recipe_conf=recipe_conf)
    except Exception as e:  # the stage itself will fail with Hydra's full message
        print(f"the config does not compose: {e}", file=sys.stderr)
        return 2
    result = check(cfg, argv[0])
    for line in result.notes:
        print(f"note: {line}")
    for line in result.reasons[:8]:
        print(line)
    if len(result.reasons) > 8:
        print(f"... and {len(result.reasons) - 8} more")
    return 0 if result.up_to_date else 1


if __name__ == "__main__":
    sys.exit(main())
