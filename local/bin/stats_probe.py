"""What the model config's encoders carry about emotion (see local/eval/stats_probe.py).

    python -m local.bin.stats_probe                                   # in egs/<corpus>
    python -m local.bin.stats_probe 'test_sets=[dev,test]' 'stats_probe.features=[log_mel,whisper]'
"""
from __future__ import annotations

from local.eval.stats_probe import run
from local.utils.hydra import entry_point


@entry_point
def main(cfg) -> dict:
    return run(cfg)


if __name__ == "__main__":
    main()
