"""Stage 1: repair, check and normalise every data dir (see local/data/format.py)."""
import logging
from pathlib import Path

from omegaconf import DictConfig

from local.data.format import format_data_dir
from local.data.kaldi import validate_data_dir
from local.data.labels import EMOTIONS, load_label_map
from local.utils.hydra import entry_point

log = logging.getLogger("format")


@entry_point
def main(cfg: DictConfig) -> None:
    label_map = load_label_map(cfg.corpus.label_map)
    for name in [cfg.train_set, cfg.dev_set, *cfg.test_sets]:
        path = Path(cfg.data_root) / name
        data = format_data_dir(path, path, Path(cfg.dump_root) / "audio" / name, label_map,
                               cfg.format.min_dur, cfg.format.max_dur, nj=cfg.nj)
        validate_data_dir(path, labels=EMOTIONS)
        log.info("%s: %d utterances kept, %d rejected (%s/rejected)", path, len(data), len(data.rejected), path)
        for utt, reason in list(data.rejected.items())[:5]:
            log.info("  rejected %s: %s", utt, reason)


if __name__ == "__main__":
    main()
