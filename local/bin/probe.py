"""Stage 5 report: linear probe of frozen encoders (Emotion2Vec-S vs -F vs the untrained init, C²SER Table V).

    python -m local.bin.probe
    python -m local.bin.probe probe.protocol=kfold probe.kfold=4 'probe.encoders=[{name: official, model: /path/emotion2vec_base}]'

Writes ``<probe.out_dir>/results.md`` and ``results.json``; see :mod:`local.eval.probe`.
"""
from __future__ import annotations

from local.bin.stages import stage_run
from local.eval.probe import run
from local.utils.hydra import entry_point


@entry_point
def main(cfg) -> None:
    with stage_run(cfg, "probe") as stage:
        run(stage.cfg)


if __name__ == "__main__":
    main()
