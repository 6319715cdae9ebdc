"""Stage 9: batched generation over a test set, one hypothesis per utterance.

Batches come from either source through the same :func:`local.data.loader.collate`:

* the set's shards (stage 4), read in order by a one-rank, unshuffled
  :class:`~local.data.loader.ShardLoader`, which can also feed cached encoder
  features;
* a plain Kaldi data dir, e.g. a user's own (``wav.scp`` is all it needs; no
  ``utt2emo`` means no references, and stage 10 then reports output
  statistics only): utterances are sorted by duration and cut into batches
  like the loader's, and only one batch of audio is in memory at a time.

Time is measured around ``generate`` alone (``time.perf_counter``, the GPU
synchronised before reading the clock), so data loading does not count and
explicit vs implicit decoding compare what the model costs.

A decode dir holds ``hyps.jsonl`` (records sorted by utterance: utt, hyp,
label, subset, lang, text, n_tokens) and ``timing.json`` (n, seconds,
sec_per_utt, tokens_per_utt, and which set / mode / model it was).
``n_tokens`` counts the output re-tokenised without special tokens: the end
of sequence token is not part of it.

With a :class:`~local.models.readout.Readout`, each hypothesis also gets the
class-name distribution read after it (its text cut at the answer prefix):
in memory the record's "dist" ({label: p}), on disk the Kaldi table
``hyp_dist`` (``utt anger:0.612345 happiness:0.001234 ...``, every read-out
label, 6 decimals: utt2dist's 4 would blur small probabilities), read back by
:func:`read_decode_dir`.  Its time is ``readout_seconds``, not in ``seconds``.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence, Union

import torch
from omegaconf import DictConfig, OmegaConf

from local.data.audio import SAMPLE_RATE, AudioError, audio_info, read_audio
from local.data.kaldi import DataDir, DataDirError, parse_dist, read_table, write_table
from local.data.loader import ShardLoader, bucket_batches, collate
from local.data.shards import MANIFEST, _records, load_manifest
from local.models.alm import AudioLLM, batch_speakers, model_config
from local.models.readout import Readout
from local.reasoning.prompts import with_transcript
from local.utils.atomic import write_text_atomic
from local.utils.provenance import flatten

log = logging.getLogger(__name__)

HYPS, TIMING, HYP_DIST = "hyps.jsonl", "timing.json", "hyp_dist"
# what every job of a split decode must share (the rest of timing.json is each job's own count and time)
PART_SETTINGS = ("set", "mode", "target", "labels", "data_dir", "source", "model_dir", "instruction", "gen_kwargs",
                 "batch_size", "speaker_stats", "readout")
SOURCES = ("auto", "shards", "data")


def generation_kwargs(max_new_tokens: int, sample: bool = False, temperature: float = 0.7,
                      top_p: float = 0.9) -> dict:
    """``generate`` options: greedy, or nucleus sampling.

    C²SER does not state its decoding settings; greedy is the default, and
    temperature 0.7 / top-p 0.9 are our choice for the sampling option.
    """
    kwargs = {"max_new_tokens": int(max_new_tokens), "do_sample": bool(sample)}
    if sample:
        kwargs.update(temperature=float(temperature), top_p=float(top_p))
    return kwargs


# --- the model ---------------------------------------------------------------------

def _overridden(overrides: Sequence[str]) -> list[str]:
    """The parts of cfg.model that command-line overrides set: "" for all of it, else dotted prefixes."""
    out = []
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key == "model" or key.startswith("model@"):
            out.append("")
        elif key.startswith("model/"):
            out.append(key[len("model/"):].split("@")[0].replace("/", "."))
        elif key.startswith("model."):
            out.append(key[len("model."):])
    return out


def check_model_config(model_dir: Path | str, live: DictConfig, overrides: Sequence[str], own: bool) -> None:
    """Refuse to decode when the live ``model`` config says something else than the model was trained with.

    A trained model is rebuilt from its own ``model.yaml`` (ESPnet's rule), so a live ``model.*`` override
    would be silently ignored, and a table would describe a model that was never decoded.  ``own``: the
    model is the experiment's own (decode.model_dir unset), trained from this very config, so any
    difference means the config was edited after training; otherwise only the keys the command line sets
    are compared.
    """
    path = Path(model_dir) / "model.yaml"
    if not path.is_file():
        return  # loading it will say what is missing
    saved = flatten(OmegaConf.to_container(model_config(model_dir)))
    now = flatten(OmegaConf.to_container(live, resolve=True))
    prefixes = [""] if own else _overridden(overrides)
    differ = sorted(k for k in saved.keys() | now.keys()
                    if k != "llm.tokenizer" and saved.get(k, "<unset>") != now.get(k, "<unset>")
                    and any(not p or k == p or k.startswith(p + ".") for p in prefixes))
    if differ:
        what = "; ".join(f"model.{k} is {now.get(k, '<unset>')} here but {saved.get(k, '<unset>')} in {path}"
                         for k in differ[:4]) + (f" (and {len(differ) - 4} more)" if len(differ) > 4 else "")
        raise ValueError(f"refusing to decode: {what}. Decoding rebuilds the model as it was trained; "
                         "to change the model, train it again with that setting (run.sh re-runs the stages "
                         "that read it), or drop the override")


# --- sources of batches ------------------------------------------------------------

@dataclass(frozen=True)
class TestSet:
    name: str                 # decode dirs are decode_<name>_<mode>
    data_dir: Path
    shard_dir: Path | None    # None: decode from the data dir


def resolve_test_set(entry: str, data_root: Path | str, dump_root: Path | str,
                     shard_subdir: str = "shards", source: str = "auto") -> TestSet:
    """Where a ``test_sets`` entry lives: a set name under ``data_root``, or any data dir path.

    A set name's decode dirs are named after it, a path's after its last
    component.  ``source="auto"`` uses a set's shards
    (``<dump_root>/<name>/<shard_subdir>``) when they are complete, else its
    data dir; a path outside ``data_root`` has no shards.
    """
    if source not in SOURCES:
        raise ValueError(f"decode source must be one of {SOURCES}, got '{source}'")
    name = Path(entry).name
    in_root = not Path(entry).is_absolute() and (Path(data_root) / entry).is_dir()
    if in_root or not Path(entry).is_dir():
        data_dir, shard_dir = Path(data_root) / entry, Path(dump_root) / name / shard_subdir
    else:  # a path to a data dir outside the recipe
        data_dir, shard_dir = Path(entry), None
    has_shards = shard_dir is not None and (shard_dir / MANIFEST).is_file()
    if source == "shards" and not has_shards:
        raise FileNotFoundError(f"{shard_dir or data_dir}: no complete shards (stage 4) for test set '{entry}'")
    if not has_shards or source == "data":
        if not data_dir.is_dir():
            raise FileNotFoundError(f"test set '{entry}': neither {data_dir} nor {shard_dir} exists")
        return TestSet(name, data_dir, None)
    return TestSet(name, data_dir, shard_dir)


class DataDirBatches:
    """Collated batches straight from a data dir's ``wav.scp`` (and ``segments``), shortest first.

    Durations come from ``utt2dur``, ``segments`` or the audio file headers
    (a ``cmd |`` entry counts as 0 s); the audio itself is read batch by
    batch.  An utterance whose audio cannot be read is logged, left out and
    kept in ``rejected`` (utt -> reason).
    """

    def __init__(self, data_dir: Path | str, batch_size: int | None, max_seconds: float | None = None,
                 part: tuple[int, int] = (0, 1)):
        self.data_dir = Path(data_dir)
        data = load_decode_dir(self.data_dir)
        self.records = _records(data, None)
        self.rejected: dict[str, str] = {u: "no audio: missing from wav.scp (or segments)"
                                         for u, r in self.records.items() if r["source"] is None}
        durs = [(u, self._duration(data, u)) for u in data.utts if u not in self.rejected]
        job, jobs = part  # a decoding job's part: the batches job, job + jobs, ... of the whole plan
        if job:
            self.rejected = {}  # the utterances without audio are job 0's to report
        self.plan = list(bucket_batches(durs, len(durs), batch_size, max_seconds, None))[job::jobs]
        self.utts = [u for batch in self.plan for u in batch]

    def _duration(self, data: DataDir, utt: str) -> float:
        try:
            if "utt2dur" in data and utt in data["utt2dur"]:
                return float(data["utt2dur"][utt])
            spec, start, end = self.records[utt]["source"]
            if end is not None:
                return end - start
            if spec.rstrip().endswith("|"):
                return 0.0
            sr, _, frames = audio_info(spec)
            return frames / sr
        except (ValueError, RuntimeError, OSError):
            return 0.0  # unknown: reading the audio will tell what is wrong with it

    def __iter__(self) -> Iterator[dict]:
        for batch in self.plan:
            samples = []
            for utt in batch:
                spec, start, end = self.records[utt]["source"]
                try:
                    wav = read_audio(spec, utt, start=start, end=end)
                except AudioError as e:
                    log.warning("%s: rejected %s: %s", self.data_dir, utt, e)
                    self.rejected[utt] = str(e)
                    continue
                meta = {**self.records[utt]["meta"], "dur": len(wav) / SAMPLE_RATE}
                samples.append({"utt": utt, "meta": meta, "targets": [], "wav": wav, "feats": {}})
            if samples:
                yield collate(samples)


def load_decode_dir(path: Path) -> DataDir:
    """A data dir that may be only ``wav.scp`` (+ ``segments``); no ``utt2spk`` means one speaker per utterance."""
    data = DataDir.load(path)
    if "wav.scp" not in data:
        raise DataDirError(path / "wav.scp", None, "is missing; decoding needs it")
    if "utt2spk" not in data:
        utts = data["segments"] if "segments" in data else data["wav.scp"]
        data["utt2spk"] = {utt: utt for utt in utts}
    return data


def open_batches(test_set: TestSet, model: AudioLLM, batch_size: int | None, max_seconds: float | None = None,
                 features: Sequence[str] | None = None, num_workers: int = 0, part: tuple[int, int] = (0, 1)
                 ) -> tuple[Iterable[dict], list[str]]:
    """(batches, the utterance ids they must cover) of a test set, or of job ``part[0]`` of ``part[1]``: the
    whole batches part[0], part[0] + part[1], ... of the one-job plan.

    ``features`` names cached shard features to read instead of running the
    encoders; None takes every feature the model uses that the shards hold.
    """
    if test_set.shard_dir is None:
        source = DataDirBatches(test_set.data_dir, batch_size, max_seconds, part)
        return source, source.utts
    manifest = load_manifest(test_set.shard_dir)
    if features is None:
        features = [n for n in model.feature_names() if n in manifest["features"]]
    job, jobs = part
    loader = ShardLoader(test_set.shard_dir, batch_size=batch_size, max_seconds=max_seconds, shuffle=False,
                         rank=job, world_size=jobs, split="batches", num_workers=num_workers,
                         features=list(features), load_audio=not set(model.feature_names()) <= set(features))
    if jobs == 1:
        return loader, list(manifest["utts"])
    return loader, [u for batches in loader.dataset.plan(0, max(num_workers, 1)) for b in batches for u in b]


# --- decoding ------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


Instruction = Union[str, Callable[[str, Mapping], str]]


def decode(model: AudioLLM, loader: Iterable[Mapping], instruction: Instruction, gen_kwargs: Mapping | None = None,
           *, transcript_in_prompt: bool = False, readout: Readout | None = None) -> tuple[list[dict], dict]:
    """Generate for every utterance of ``loader``; (records sorted by utt, timing).

    ``instruction`` is one text for every utterance, or ``(utt, meta) -> text`` for one of its own (a
    question drawn from an evaluation pool, an SQA question), which each record then keeps as "prompt".

    ``transcript_in_prompt`` writes each transcript into the prompt, as the
    text-only cascade was trained (local.reasoning.prompts.with_transcript).  An
    utterance that comes twice is an error: the loader must be one rank, one pass.
    ``readout`` adds each hypothesis' read-out distribution ("dist").
    """
    model.eval()
    records, seconds, readout_seconds = {}, 0.0, 0.0
    for batch in loader:
        again = [u for u in batch["utts"] if u in records]
        if again:
            raise RuntimeError(f"utterance(s) {again[:3]} decoded twice: the loader must yield each once")
        own = callable(instruction)
        prompts = [instruction(u, m) if own else instruction for u, m in zip(batch["utts"], batch["meta"])]
        if transcript_in_prompt:
            missing = [u for u, m in zip(batch["utts"], batch["meta"]) if not m.get("text")]
            if missing:
                raise ValueError(f"the prompt needs the transcript, and {missing[:3]} have none (text table)")
            prompts = [with_transcript(p, m["text"]) for p, m in zip(prompts, batch["meta"])]
        _sync(model.device)
        start = time.perf_counter()
        hyps = model.generate(batch.get("wav"), batch.get("wav_lens"), prompts, feats=batch.get("feats"),
                              feat_lens=batch.get("feat_lens"), speakers=batch_speakers(batch), **(gen_kwargs or {}))
        _sync(model.device)
        seconds += time.perf_counter() - start
        dists = [None] * len(hyps)
        if readout is not None:
            start = time.perf_counter()
            dists = readout.distributions(model, batch, prompts, hyps)
            _sync(model.device)
            readout_seconds += time.perf_counter() - start
        for utt, meta, hyp, dist, prompt in zip(batch["utts"], batch["meta"], hyps, dists, prompts):
            records[utt] = {"utt": utt, "hyp": hyp, "label": meta.get("label"),
                            "subset": meta.get("subset"), "lang": meta.get("lang"), "text": meta.get("text"),
                            "n_tokens": len(model.tokenizer(hyp, add_special_tokens=False).input_ids)}
            if own:
                records[utt]["prompt"] = prompt
            if dist is not None:
                records[utt]["dist"] = dist
    out = [records[u] for u in sorted(records)]
    n = len(out)
    timing = {"n": n, "seconds": seconds, "sec_per_utt": seconds / n if n else None,
              "tokens_per_utt": sum(r["n_tokens"] for r in out) / n if n else None}
    if readout is not None:
        timing["readout_seconds"] = readout_seconds
    return out, timing


def decode_test_set(model: AudioLLM, test_set: TestSet, instruction: Instruction, gen_kwargs: Mapping, *,
                    batch_size: int | None, max_seconds: float | None = None,
                    features: Sequence[str] | None = None, num_workers: int = 0,
                    transcript_in_prompt: bool = False, readout: Readout | None = None,
                    speaker_stats: bool = True, part: tuple[int, int] = (0, 1)) -> tuple[list[dict], dict]:
    """:func:`decode` over a test set, checked to cover each of its readable utterances exactly once.

    With per-speaker normalisation, each test speaker's statistics come from that speaker's utterances in
    the test set itself (its unlabelled audio, all of it, before decoding: a transductive choice, as
    Kaldi's per-speaker CMVN makes it); ``speaker_stats=False`` gives every test speaker the training set's
    global statistics instead, for the row without them.  ``part`` decodes one job's share (:func:`open_batches`);
    the speaker statistics still come from the whole set.
    """
    if model.speaker_norm and speaker_stats:
        model.fit_feature_norm(open_batches(test_set, model, batch_size, max_seconds, features, num_workers)[0],
                               speakers=True)
    elif model.speaker_norm:
        model.feature_norm.speakers = {}
    loader, expected = open_batches(test_set, model, batch_size, max_seconds, features, num_workers, part)
    records, timing = decode(model, loader, instruction, gen_kwargs, transcript_in_prompt=transcript_in_prompt,
                             readout=readout)
    rejected = getattr(loader, "rejected", {})
    want = sorted(set(expected) - set(rejected))
    got = [r["utt"] for r in records]
    if got != want:
        lost, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        raise RuntimeError(f"{test_set.name}: decoding missed {lost[:3]} and added {extra[:3]} "
                           f"({len(lost)} / {len(extra)} utterances)")
    timing["rejected"] = len(rejected)
    return records, timing


# --- decode dirs ---------------------------------------------------------------------

def write_decode_dir(out_dir: Path | str, records: Sequence[Mapping], timing: Mapping) -> None:
    """``hyps.jsonl`` (sorted by utt), ``hyp_dist`` when the records have "dist", and ``timing.json``, each
    written atomically (timing last: it marks the dir complete).  A stale ``hyp_dist`` is removed."""
    out_dir = Path(out_dir)
    records = sorted(records, key=lambda r: r["utt"])
    with_dist = [r["utt"] for r in records if "dist" in r]
    if with_dist and len(with_dist) != len(records):
        missing = sorted({r["utt"] for r in records} - set(with_dist))
        raise ValueError(f"{out_dir}: {len(missing)} hypotheses have no read-out distribution, e.g. {missing[0]}")
    # the read-out distribution is in each record too, rounded, for the reader; hyp_dist keeps it for scoring
    lines = "".join(json.dumps({**r, "dist": {k: round(p, 6) for k, p in r["dist"].items()}} if "dist" in r else r,
                               ensure_ascii=False) + "\n" for r in records)
    write_text_atomic(out_dir / HYPS, lines)
    if with_dist:
        table = {r["utt"]: " ".join(f"{label}:{p:.6f}" for label, p in r["dist"].items()) for r in records}
        tmp = out_dir / f".{HYP_DIST}.tmp"
        write_table(tmp, table)
        tmp.replace(out_dir / HYP_DIST)
    else:
        (out_dir / HYP_DIST).unlink(missing_ok=True)
    write_text_atomic(out_dir / TIMING, json.dumps(dict(timing), indent=2, ensure_ascii=False) + "\n")


def merge_parts(out_dir: Path | str, jobs: int) -> None:
    """Write ``out_dir`` from the parts ``out_dir/split<jobs>/<job>/`` that ``jobs`` decoding jobs wrote, and
    remove them: every part must be there, made with the same settings, and no utterance in two parts."""
    out_dir = Path(out_dir)
    split = out_dir / f"split{jobs}"
    missing = [str(split / str(k)) for k in range(1, jobs + 1) if not (split / str(k) / TIMING).is_file()]
    if missing:
        raise FileNotFoundError(f"{out_dir}: decoding job(s) did not finish: no {TIMING} in {', '.join(missing)}")
    parts = [read_decode_dir(split / str(k)) for k in range(1, jobs + 1)]
    same = {k: v for k, v in parts[0][1].items() if k in PART_SETTINGS}
    for k, (_, timing) in enumerate(parts[1:], 2):
        other = {key: v for key, v in timing.items() if key in PART_SETTINGS}
        if other != same or timing.get("part") != [k, jobs]:
            raise ValueError(f"{split / str(k)}: made with other settings than {split / '1'} (or another split): "
                             "re-run every job")
    records = [r for recs, _ in parts for r in recs]
    seen: set[str] = set()
    twice = [r["utt"] for r in records if r["utt"] in seen or seen.add(r["utt"])]
    if twice:
        raise ValueError(f"{split}: utterance(s) {twice[:3]} decoded by two jobs")
    timings = [t for _, t in parts]
    n = sum(t["n"] for t in timings)
    seconds = sum(t["seconds"] for t in timings)
    timing = {**same, "n": n, "seconds": seconds, "sec_per_utt": seconds / n if n else None,
              "tokens_per_utt": sum(r["n_tokens"] for r in records) / n if n else None,
              "rejected": sum(t["rejected"] for t in timings), "jobs": jobs}
    if any("readout_seconds" in t for t in timings):
        timing["readout_seconds"] = sum(t.get("readout_seconds", 0.0) for t in timings)
    write_decode_dir(out_dir, records, timing)
    shutil.rmtree(split)


def read_hyps(path: Path | str) -> list[dict]:
    """The records of a ``hyps.jsonl``; a malformed line is an error naming it."""
    path = Path(path)
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataDirError(path, lineno, f"not valid JSON: {e}") from None
            if not isinstance(record, dict) or not isinstance(record.get("utt"), str) \
                    or not isinstance(record.get("hyp"), str):
                raise DataDirError(path, lineno, "a hypothesis record needs a string 'utt' and 'hyp'")
            records.append(record)
    return records


def read_decode_dir(decode_dir: Path | str) -> tuple[list[dict], dict]:
    """(records, timing) of a decode dir; timing is {} when the dir has no timing.json.  With a ``hyp_dist``
    every record gets its "dist", and an utterance missing from either file is an error naming it."""
    decode_dir = Path(decode_dir)
    timing_path = decode_dir / TIMING
    timing = json.loads(timing_path.read_text(encoding="utf-8")) if timing_path.is_file() else {}
    records = read_hyps(decode_dir / HYPS)
    if (decode_dir / HYP_DIST).is_file():
        table = read_table(decode_dir / HYP_DIST)
        utts = {r["utt"] for r in records}
        for utt in sorted(utts ^ set(table)):
            where = HYP_DIST if utt in utts else HYPS
            raise DataDirError(decode_dir / where, None, f"has no entry for '{utt}'")
        for r in records:
            try:
                r["dist"] = parse_dist(table[r["utt"]])
            except ValueError as e:
                raise DataDirError(decode_dir / HYP_DIST, None, f"'{r['utt']}': {e}") from None
    return records, timing


def find_decode_dirs(exp_dir: Path | str) -> dict[str, dict[str, Path]]:
    """{test set: {mode: decode dir}} of the complete decode dirs in ``exp_dir``, as their timing.json says."""
    found: dict[str, dict[str, Path]] = {}
    for timing_path in sorted(Path(exp_dir).glob(f"decode_*/{TIMING}")):
        timing = json.loads(timing_path.read_text(encoding="utf-8"))
        if (timing_path.parent / HYPS).is_file() and "set" in timing and "mode" in timing:
            found.setdefault(timing["set"], {})[timing["mode"]] = timing_path.parent
    return found
