"""Frozen Emotion2Vec-S features (frames and utterance embeddings) of data dirs.

    python -m local.bin.e2v_extract e2v_extract.model=exp/e2vs/final e2v_extract.sets=[train,test]

Writes ``<out_root>/<set>/`` as described in :mod:`local.models.e2v_features`;
a re-run with the same model only computes what is missing.
"""
from __future__ import annotations

import logging
from pathlib import Path

from local.data.kaldi import read_table
from local.models.e2v_features import model_fingerprint, write_features
from local.models.emotion2vec_s import load_emotion2vec
from local.utils.hydra import entry_point

logger = logging.getLogger("e2v_extract")


@entry_point
def main(cfg) -> None:
    opts = cfg.e2v_extract
    sets = list(opts.sets) or [cfg.train_set, cfg.dev_set, *cfg.test_sets]
    model, report = load_emotion2vec(opts.model, opts.size)
    logger.info("model %s: %d tensors loaded, %d missing, %d unexpected", opts.model,
                len(report.loaded), len(report.missing), len(report.unexpected))
    fingerprint = model_fingerprint(opts.model, opts.size)
    for name in sets:
        data_dir = Path(cfg.data_root) / name
        if (data_dir / "segments").is_file():
            raise ValueError(f"{data_dir} has a segments file; run stage 1 (format), which cuts segments into files")
        wav_scp = read_table(data_dir / "wav.scp")
        info = write_features(model, wav_scp, Path(opts.out_root) / name, fingerprint,
                              batch_size=opts.batch_size, device=opts.device, frames=opts.frames)
        logger.info("%s: %d utterances, %d rejected, dim %d -> %s", name, info["num_utts"],
                    info["num_rejected"], info["dim"], Path(opts.out_root) / name)


if __name__ == "__main__":
    main()
