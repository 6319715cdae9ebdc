"""Stage 1: repair, check and normalise every data dir (see local/data/format.py)."""
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from local.bin.stages import stage_run
from local.data.asr import transcribe
from local.data.audio import read_audio
from local.data.format import format_data_dir, load_sentiment_map
from local.data.kaldi import validate_data_dir
from local.data.labels import LabelSet
from local.utils.hydra import entry_point

log = logging.getLogger("format")


@entry_point
def main(cfg: DictConfig) -> None:
    with stage_run(cfg, "format") as stage:
        format_sets(stage.cfg)


def format_sets(cfg: DictConfig) -> None:
    labels = LabelSet.from_config(cfg.corpus)
    filtered = {cfg.train_set, cfg.dev_set}  # ESPnet's rule: train and dev are filtered, test sets never
    lo, hi = cfg.format.min_dur, cfg.format.max_dur
    spec = cfg.corpus.get("sentiment_map")
    sentiment_map = load_sentiment_map(OmegaConf.to_container(spec) if OmegaConf.is_config(spec) else spec)
    for name in dict.fromkeys([cfg.train_set, cfg.dev_set, *cfg.test_sets]):
        path = Path(cfg.data_root) / name
        data = format_data_dir(path, path, Path(cfg.dump_root) / "audio" / name, labels, lo, hi,
                               nj=cfg.nj, filter_duration=name in filtered, sentiment_map=sentiment_map)
        if "text" not in data and cfg.format.asr.model:
            add_transcripts(path, data, cfg.format.asr)
        validate_data_dir(path, labels=labels.labels if name in filtered else labels.extended().labels)
        log.info("%s: %d utterances kept, %d rejected (%s/rejected)", path, len(data), len(data.rejected), path)
        if name not in filtered:
            outside = sum(not lo <= float(d) <= hi for d in data["utt2dur"].values())
            log.info("%s: test set, not duration-filtered: %d utterances kept outside [%s, %s] s",
                     path, outside, lo, hi)
        for utt, reason in list(data.rejected.items())[:5]:
            log.info("  rejected %s: %s", utt, reason)


def add_transcripts(path: Path, data, asr) -> None:
    """``text`` from the ASR model of ``format.asr`` for a set that has none (local/data/asr.py)."""
    utts = data.utts
    waves = [read_audio(data["wav.scp"][u], u) for u in utts]
    texts = transcribe(waves, asr.model, device=asr.device, batch_size=asr.batch_size, language=asr.language,
                       max_new_tokens=asr.max_new_tokens)
    data.tables["text"] = dict(zip(utts, texts))
    data.save(path)
    log.info("%s: no transcripts in the corpus: %d written by the ASR model %s (format.asr)", path, len(utts),
             asr.model)


if __name__ == "__main__":
    main()
