"""Stage 4: pack a data dir into webdataset tar shards for the training stages.

Training reads tens of thousands of small files per epoch on several GPUs; a
few large sequential tars read far faster than scattered wavs, and a tar is
the unit that ranks and loader workers split between them.  Each sample is one
utterance:

``<utt>.flac`` (or ``.wav``)
    16 kHz mono 16-bit audio, as :func:`local.data.audio.read_audio` returns it
    (``segments`` respected), so no later stage resamples or re-cuts.
``<utt>.json``
    metadata from the tables that exist: utt, spk, label, dist, lang, text,
    subset, intensity, attr, and dur (seconds of the stored audio).
``<utt>.targets.json``
    the list of reasoning-target records of the utterance (stage 3), when
    ``targets.jsonl`` is given.
``<utt>.<name>.npy``
    an optional cached feature: ``features`` maps a name to a callable
    ``wav -> np.ndarray`` (e.g. a frozen encoder's frame outputs); the loader
    returns it padded in ``batch["feats"][name]``.

``manifest.json`` is written last (temp name, then rename), so a dir with a
manifest is complete and a dir without one is rewritten.  It also lists every
utterance's duration in shard order, which is what lets the loader plan an
epoch's batches without opening a tar (see :mod:`local.data.loader`).

Determinism: utterances are assigned to shards in utt-id order, or in a
seeded random order (``shuffle_seed``) so that every shard mixes speakers and
emotions; within a shard they are sorted by id.  Tar headers carry a fixed
mtime, so the same inputs give byte-identical shards whatever ``nj`` is.
"""
from __future__ import annotations

import fcntl
import io
import json
import logging
import os
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import soundfile as sf
import webdataset as wds

from local.data.audio import SAMPLE_RATE, AudioError, read_audio
from local.data.kaldi import UTT_TABLES, DataDir, DataDirError, parse_dist, parse_kv, write_table
from local.utils.atomic import write_text_atomic
from local.utils.digest import file_digest, value_digest
from local.utils.jobs import map_jobs

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# Bump when the sample layout changes, so old dumps are rewritten.
FORMAT_VERSION = 1
AUDIO_FORMATS = ("flac", "wav")
# Extensions a feature name may not take, or it would overwrite a field.
RESERVED = {"flac", "wav", "json", "targets"}
# (table, metadata key, parser): the metadata fields copied from the data dir.
META_TABLES = (
    ("utt2emo", "label", str),
    ("utt2dist", "dist", parse_dist),
    ("utt2lang", "lang", str),
    ("text", "text", str),
    ("utt2subset", "subset", str),
    ("utt2int", "intensity", str),
)

FeatureFn = Callable[[np.ndarray], np.ndarray]


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def load_manifest(out_dir: Path | str) -> dict:
    """The manifest of a complete shard dir; a dir without one was interrupted."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir}: no {MANIFEST}, so the shards are missing or incomplete "
                                "(re-run stage 4)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_targets(path: Path | str) -> dict[str, list[dict]]:
    """Group the records of a targets.jsonl by utterance, in file order."""
    path = Path(path)
    by_utt: dict[str, list[dict]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataDirError(path, lineno, f"not valid JSON: {e}") from None
            if not isinstance(record, dict) or not isinstance(record.get("utt"), str):
                raise DataDirError(path, lineno, "a target record must be an object with a string 'utt'")
            by_utt.setdefault(record["utt"], []).append(record)
    return by_utt


def fingerprint_parts(data_dir: Path | str, targets_path: Path | str | None, options: Mapping) -> dict[str, str]:
    """Hashes of what a shard dir is made from: ``data`` (the tables, hence the audio and metadata, and the
    options) and ``targets`` (targets.jsonl).  Kept apart in the manifest so that a stage that reads no
    targets (stage 5) is not re-run when only the targets changed.

    Audio files themselves are not hashed (that would read every file on each
    re-run); wav.scp is, so pointing an utterance at another file counts.
    Features count by name only: give a changed extractor a new name.
    """
    tables = {name: file_digest(Path(data_dir) / name) for name in UTT_TABLES if (Path(data_dir) / name).is_file()}
    return {"data": value_digest({"version": FORMAT_VERSION, **options, "tables": tables}),
            "targets": file_digest(targets_path) if targets_path and Path(targets_path).is_file() else ""}


def fingerprint(data_dir: Path | str, targets_path: Path | str | None, options: Mapping) -> str:
    """A hash of everything a shard dir is made from, to tell whether it is stale."""
    return value_digest(fingerprint_parts(data_dir, targets_path, options))


def _number_or_str(value: str) -> float | str:
    """An utt2attr value as JSON metadata: raw values as numbers, levels as strings.

    A test set keeps utterances stage 2 could not measure (``pitch=unknown
    f0_hz=nan``) and a silent clip has ``lufs=-inf``: those stay a float NaN /
    -inf, which Python's json writes as ``NaN`` / ``-Infinity`` and the loader's
    ``json.loads`` reads back as the same floats (so ``math.isnan`` still tells
    a gap from a measurement), and ``unknown`` stays a string level.
    """
    try:
        return float(value)
    except ValueError:
        return value


def _records(data: DataDir, targets: Mapping[str, list[dict]] | None) -> dict[str, dict]:
    """What a worker needs to write each utterance: where its audio is, and its metadata."""
    segments = data.get("segments")
    records = {}
    for utt in data.utts:
        meta: dict = {"utt": utt, "spk": data["utt2spk"][utt]}
        for table, key, parse in META_TABLES:
            if table in data and utt in data[table]:
                meta[key] = parse(data[table][utt])
        if "utt2attr" in data and utt in data["utt2attr"]:
            meta["attr"] = {k: _number_or_str(v) for k, v in parse_kv(data["utt2attr"][utt]).items()}
        records[utt] = {"source": _source(data, segments, utt), "meta": meta,
                        "targets": None if targets is None else targets.get(utt, [])}
    return records


def _source(data: DataDir, segments: Mapping[str, str] | None, utt: str) -> tuple | None:
    """(wav.scp entry, start, end) of an utterance, or None when the tables do not say."""
    if segments is None:
        spec = data["wav.scp"].get(utt)
        return None if spec is None else (spec, 0.0, None)
    if utt not in segments or segments[utt].split()[0] not in data["wav.scp"]:
        return None
    reco, start, end = segments[utt].split()
    return data["wav.scp"][reco], float(start), float(end)


def _encode_audio(wav: np.ndarray, audio_format: str) -> bytes:
    """16-bit PCM, quantised here (x * 32768, rounded) so a 16-bit source comes back exactly."""
    pcm = np.clip(np.round(wav * 32768.0), -32768, 32767).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, SAMPLE_RATE, format=audio_format.upper(), subtype="PCM_16")
    return buf.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def _write_shard(job: tuple) -> tuple[list[tuple[str, float]], list[tuple[str, str]]]:
    """Write one shard; return (utt, dur) of what went in and (utt, reason) of what did not."""
    path, utts, records, audio_format, features = job
    written, rejected = [], []
    with wds.TarWriter(str(path), encoder=False, mtime=0, user="", group="", format="PAX_FORMAT") as tar:
        for utt in utts:
            record = records[utt]
            spec, start, end = record["source"]
            try:
                wav = read_audio(spec, utt, start=start, end=end)
            except AudioError as e:
                rejected.append((utt, str(e)))
                continue
            dur = len(wav) / SAMPLE_RATE
            sample = {
                "__key__": utt,
                audio_format: _encode_audio(wav, audio_format),
                "json": json.dumps({**record["meta"], "dur": dur}, ensure_ascii=False).encode("utf-8"),
            }
            if record["targets"] is not None:
                sample["targets.json"] = json.dumps(record["targets"], ensure_ascii=False).encode("utf-8")
            for name, fn in features.items():
                sample[f"{name}.npy"] = _npy_bytes(fn(wav))
            tar.write(sample)
            written.append((utt, dur))
    return written, rejected


def _clear(out_dir: Path) -> None:
    """Make the dir incomplete first (manifest gone), then remove what the last run left."""
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for item in out_dir.iterdir():
        if item.name.startswith(("shard-", ".shard-")) or item.name in ("rejected", f".{MANIFEST}.tmp"):
            item.unlink()


def write_shards(data_dir: Path | str, out_dir: Path | str, max_shard_size: int,
                 targets_path: Path | str | None = None,
                 features: Mapping[str, FeatureFn] | None = None,
                 audio_format: str = "flac", nj: int = 1, shuffle_seed: int | None = None,
                 force: bool = False) -> dict:
    """Write ``out_dir/shard-*.tar`` and ``manifest.json`` for a data dir; return the manifest.

    ``max_shard_size`` is utterances per shard.  An up-to-date complete dir
    (same input fingerprint) is left alone unless ``force``.  Utterances whose
    audio cannot be read are skipped and listed in ``out_dir/rejected``.
    With ``nj > 1`` shards are written by that many processes, so ``features``
    callables must pickle; run a GPU encoder with ``nj=1`` (in this process).
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    features = dict(features or {})
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"audio_format must be one of {AUDIO_FORMATS}, not '{audio_format}'")
    if max_shard_size < 1:
        raise ValueError(f"max_shard_size must be >= 1, not {max_shard_size}")
    for name in features:
        if not name or "." in name or "/" in name or name in RESERVED:
            raise ValueError(f"feature name '{name}' must be non-empty, without '.' or '/', "
                             f"and not one of {sorted(RESERVED)}")
    options = {"max_shard_size": max_shard_size, "audio_format": audio_format,
               "shuffle_seed": shuffle_seed, "features": sorted(features)}
    parts = fingerprint_parts(data_dir, targets_path, options)
    digest = value_digest(parts)
    # Two stages that share a dir (two experiments' feature caches) take turns: the second
    # waits for the first and then finds the dir up to date.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _write_locked(data_dir, out_dir, max_shard_size, targets_path, features, audio_format, nj,
                             shuffle_seed, force, digest, parts)


def _write_locked(data_dir: Path, out_dir: Path, max_shard_size: int, targets_path: Path | str | None,
                  features: dict[str, FeatureFn], audio_format: str, nj: int, shuffle_seed: int | None,
                  force: bool, digest: str, parts: dict[str, str]) -> dict:
    if not force and (out_dir / MANIFEST).is_file():
        manifest = load_manifest(out_dir)
        if manifest.get("fingerprint") == digest and all(
                (out_dir / s["name"]).is_file() for s in manifest["shards"]):
            log.info("%s: shards are up to date (%d utterances), skipping", out_dir, manifest["num_utts"])
            return manifest

    data = DataDir.load(data_dir)
    targets = read_targets(targets_path) if targets_path else None
    if targets is not None:
        unknown = set(targets) - set(data.utts)
        if unknown:
            log.warning("%s: %d target records' utterances are not in %s (e.g. %s); ignored",
                        targets_path, len(unknown), data_dir, min(unknown))
    records = _records(data, targets)

    # A '.' in a key would be read back as the start of the extension.
    rejected = {utt: "utterance id contains '.', which webdataset reads as the extension separator"
                for utt in records if "." in utt}
    rejected.update({utt: "no audio: missing from wav.scp (or segments)"
                     for utt, record in records.items() if record["source"] is None})
    utts = [utt for utt in data.utts if utt not in rejected]
    if shuffle_seed is not None:
        utts = [utts[i] for i in np.random.default_rng(shuffle_seed).permutation(len(utts))]
    chunks = [sorted(utts[i:i + max_shard_size]) for i in range(0, len(utts), max_shard_size)]

    out_dir.mkdir(parents=True, exist_ok=True)
    _clear(out_dir)
    jobs = [(out_dir / f".{shard_name(i)}.tmp", chunk, {u: records[u] for u in chunk},
             audio_format, features) for i, chunk in enumerate(chunks)]
    results = map_jobs(_write_shard, jobs, nj)

    shards, all_utts, durs = [], [], []
    for job, (written, bad) in zip(jobs, results):
        rejected.update(bad)
        if not written:  # every utterance of it was rejected
            job[0].unlink()
            continue
        name = shard_name(len(shards))
        os.replace(job[0], out_dir / name)
        shards.append({"name": name, "num_samples": len(written),
                       "dur": sum(d for _, d in written)})
        all_utts += [u for u, _ in written]
        durs += [d for _, d in written]
    for utt, reason in sorted(rejected.items()):
        log.warning("%s: rejected %s: %s", data_dir, utt, reason)
    if rejected:
        tmp = out_dir / ".rejected.tmp"
        write_table(tmp, {u: " ".join(r.split()) for u, r in rejected.items()})
        os.replace(tmp, out_dir / "rejected")

    manifest = {
        "version": FORMAT_VERSION,
        "fingerprint": digest,
        "parts": parts,
        "data_dir": str(data_dir),
        "audio_format": audio_format,
        "sample_rate": SAMPLE_RATE,
        "features": sorted(features),
        "has_targets": targets is not None,
        "num_utts": len(all_utts),
        "num_rejected": len(rejected),
        "hours": sum(durs) / 3600,
        "shards": shards,
        "utts": all_utts,
        "durs": durs,
    }
    write_text_atomic(out_dir / MANIFEST, json.dumps(manifest, ensure_ascii=False))
    log.debug("%s: %d utterances (%.2f h) in %d shards, %d rejected", out_dir, len(all_utts),
             manifest["hours"], len(shards), len(rejected))
    return manifest
