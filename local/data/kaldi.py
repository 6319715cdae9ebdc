"""Kaldi-style data directories: reading, writing and validating them.

A data dir is a folder of two-column text tables keyed by utterance id (or
speaker id for ``spk2utt``), each sorted in C byte order with unique keys.  Our
extra tables (``utt2emo``, ``utt2dist``, ``utt2attr`` ...) follow the same rule,
so one reader and one validator serve all of them.  Errors name the file and
line, as Kaldi's ``validate_data_dir.sh`` does, because a user with 100k lines
needs to know where to look.

Writes are atomic: a dir is written under a temporary name next to its final
place and renamed over it, so a crash never leaves a half-written dir behind.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from local.data.labels import EMOTIONS

log = logging.getLogger(__name__)

# Tables keyed by utterance id.  Only wav.scp and utt2spk are required.
UTT_TABLES = (
    "wav.scp", "utt2spk", "text", "utt2emo", "utt2dist", "utt2lang", "utt2dur",
    "utt2int", "utt2subset", "utt2attr", "utt2sentiment", "utt2qa", "segments",
)
REQUIRED = ("wav.scp", "utt2spk")
# Tables whose value may be empty (an empty transcript is legal in Kaldi).
MAY_BE_EMPTY = ("text",)
# The values of utt2sentiment (MELD's three classes, and what corpus.sentiment_map may map an emotion to).
SENTIMENTS = ("positive", "negative", "neutral")


class DataDirError(ValueError):
    """A data dir is malformed; the message names the file and line."""

    def __init__(self, path: Path | str, lineno: int | None, message: str):
        where = f"{path}:{lineno}" if lineno else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path, self.lineno = Path(path), lineno


def c_sorted(keys: Iterable[str]) -> list[str]:
    """Sort as ``LC_ALL=C sort`` does: by UTF-8 bytes (== code points)."""
    return sorted(keys)


def read_table(path: Path | str, allow_empty_value: bool = False) -> dict[str, str]:
    """Read ``key value...`` lines, insisting on unique, C-sorted keys."""
    path = Path(path)
    table: dict[str, str] = {}
    prev = None
    with open(path, encoding="utf-8", newline="") as f:  # newline="": see the \r
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if line.endswith("\r"):
                raise DataDirError(path, lineno, "has a DOS line ending (\\r); run dos2unix")
            if not line.strip():
                raise DataDirError(path, lineno, "is an empty line")
            key, _, value = line.partition(" ")
            value = value.strip()
            if not key:
                raise DataDirError(path, lineno, "starts with a space; the first field is the key")
            if not value and not allow_empty_value:
                raise DataDirError(path, lineno, f"key '{key}' has no value")
            if key in table:
                raise DataDirError(path, lineno, f"duplicate id '{key}'")
            if prev is not None and key < prev:
                raise DataDirError(path, lineno,
                                   f"not sorted: '{key}' comes after '{prev}' (sort with LC_ALL=C)")
            table[key] = value
            prev = key
    return table


def read_table_lenient(path: Path | str, allow_empty_value: bool = False
                       ) -> tuple[dict[str, str], dict[str, str]]:
    """Read a table that may be unsorted or broken, for stage 1 to repair.

    Returns (table, problems): the table sorted, without the keys that had a
    problem; ``problems`` maps each such key to a reason naming file and line.
    A duplicated key loses all its lines, since we cannot know which one is right.
    """
    path = Path(path)
    lines: dict[str, list[tuple[int, str]]] = {}
    problems: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            key, _, value = line.partition(" ")
            value = value.strip()
            if not key:
                continue
            if not value and not allow_empty_value:
                problems[key] = f"{path}:{lineno}: key '{key}' has no value"
            lines.setdefault(key, []).append((lineno, value))
    table = {}
    for key, entries in lines.items():
        if len(entries) > 1:
            where = ", ".join(str(n) for n, _ in entries)
            problems[key] = f"{path}: duplicate id '{key}' on lines {where}"
        elif key not in problems:
            table[key] = entries[0][1]
    return {k: table[k] for k in c_sorted(table)}, problems


def write_table(path: Path | str, table: Mapping[str, str]) -> None:
    """Write a table sorted in C order (not atomic by itself: see :func:`DataDir.save`)."""
    with open(path, "w", encoding="utf-8") as f:
        for key in c_sorted(table):
            f.write(f"{key} {table[key]}\n")


def spk2utt_of(utt2spk: Mapping[str, str]) -> dict[str, str]:
    spk2utt: dict[str, list[str]] = {}
    for utt in c_sorted(utt2spk):
        spk2utt.setdefault(utt2spk[utt], []).append(utt)
    return {spk: " ".join(utts) for spk, utts in spk2utt.items()}


# --- value formats of our extra tables ---------------------------------------

def parse_dist(value: str) -> dict[str, float]:
    """``anger:0.5 sadness:0.5`` -> {"anger": 0.5, "sadness": 0.5}."""
    dist = {}
    for item in value.split():
        label, sep, p = item.partition(":")
        if not sep:
            raise ValueError(f"'{item}' is not label:probability")
        dist[label] = float(p)
    return dist


def format_dist(dist: Mapping[str, float]) -> str:
    return " ".join(f"{k}:{v:.4f}" for k, v in dist.items() if v > 0)


def parse_kv(value: str) -> dict[str, str]:
    """``pitch=high rate=low`` -> {"pitch": "high", "rate": "low"} (utt2attr)."""
    out = {}
    for item in value.split():
        k, sep, v = item.partition("=")
        if not sep:
            raise ValueError(f"'{item}' is not key=value")
        out[k] = v
    return out


def format_kv(kv: Mapping[str, object]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in kv.items())


def parse_qa(value: str) -> list[tuple[str, str]]:
    """An utt2qa value, ``[["question", "answer"], ...]`` (JSON on one line), as (question, answer) pairs.

    JSON rather than a bespoke syntax because questions and answers are free text with spaces,
    quotes and any script; ``[]`` is an utterance nobody asked about."""
    try:
        pairs = json.loads(value)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at character {e.pos}); expected [[question, answer], ...]") from None
    if not isinstance(pairs, list):
        raise ValueError(f"expected a JSON list of [question, answer] pairs, got {type(pairs).__name__}")
    out = []
    for n, pair in enumerate(pairs, 1):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ValueError(f"pair {n} is not [question, answer] (two strings): {json.dumps(pair, ensure_ascii=False)}")
        question, answer = pair[0].strip(), pair[1].strip()
        if not question or not answer:
            raise ValueError(f"pair {n} has an empty {'question' if not question else 'answer'}")
        out.append((question, answer))
    return out


def format_qa(pairs: Iterable[tuple[str, str]]) -> str:
    """The utt2qa value of ``pairs``: one line of JSON, other scripts kept as they are."""
    return json.dumps([[q, a] for q, a in pairs], ensure_ascii=False)


# --- the data dir -------------------------------------------------------------

@dataclass
class DataDir:
    """All tables of one data dir in memory, keyed by file name."""

    tables: dict[str, dict[str, str]] = field(default_factory=dict)
    # utt -> reason, written as the ``rejected`` file so nothing is lost silently
    rejected: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | str) -> "DataDir":
        path = Path(path)
        if not path.is_dir():
            raise DataDirError(path, None, "no such data dir")
        tables = {}
        for name in UTT_TABLES:
            if (path / name).exists():
                tables[name] = read_table(path / name, allow_empty_value=name in MAY_BE_EMPTY)
        rejected = read_table(path / "rejected") if (path / "rejected").exists() else {}
        return cls(tables, rejected)

    @classmethod
    def load_lenient(cls, path: Path | str) -> "DataDir":
        """Load a dir that may be unsorted or have bad lines; bad keys go to ``rejected``."""
        path = Path(path)
        if not path.is_dir():
            raise DataDirError(path, None, "no such data dir")
        data = cls()
        for name in UTT_TABLES:
            if (path / name).exists():
                table, problems = read_table_lenient(path / name, allow_empty_value=name in MAY_BE_EMPTY)
                data.tables[name] = table
                for key, reason in problems.items():
                    data.rejected.setdefault(key, reason)
        if (path / "rejected").exists():
            data.rejected.update(read_table_lenient(path / "rejected")[0])
        for utt in list(data.rejected):
            data.reject(utt, data.rejected[utt])
        return data

    @property
    def utts(self) -> list[str]:
        return c_sorted(self.tables.get("utt2spk", {}))

    def __len__(self) -> int:
        return len(self.tables.get("utt2spk", {}))

    def __getitem__(self, name: str) -> dict[str, str]:
        return self.tables[name]

    def __setitem__(self, name: str, table: dict[str, str]) -> None:
        self.tables[name] = table

    def get(self, name: str) -> dict[str, str] | None:
        return self.tables.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.tables

    def reject(self, utt: str, reason: str) -> None:
        """Drop an utterance from every table and remember why."""
        for table in self.tables.values():
            table.pop(utt, None)
        self.rejected[utt] = " ".join(reason.split())

    def subset(self, utts: Iterable[str], keep_rejected: bool = False) -> "DataDir":
        """The utterances ``utts`` (with segments: wav.scp keeps the recordings they cut from)."""
        keep = set(utts)
        recordings = {v.split()[0] for u, v in (self.get("segments") or {}).items() if u in keep}
        return DataDir({name: {u: v for u, v in t.items() if u in keep or (name == "wav.scp" and u in recordings)}
                        for name, t in self.tables.items()}, rejected=dict(self.rejected) if keep_rejected else {})

    def save(self, path: Path | str) -> None:
        """Write atomically: a temp dir beside ``path``, then rename over it.

        Other files of an existing dir (attr_stats.json, targets.jsonl, a corpus
        README) are carried over, so a stage can rewrite a dir in place.  Data
        dirs hold tables, not audio: sub-folders are not expected and not copied.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; a data dir is not
        try:
            if path.is_dir():
                managed = set(UTT_TABLES) | {"spk2utt", "rejected"}
                for item in path.iterdir():
                    if item.is_file() and item.name not in managed:
                        shutil.copy2(item, tmp / item.name)
            for name, table in self.tables.items():
                write_table(tmp / name, table)
            if "utt2spk" in self.tables:
                write_table(tmp / "spk2utt", spk2utt_of(self.tables["utt2spk"]))
            if self.rejected:
                write_table(tmp / "rejected", self.rejected)
            replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def combine_data(parts: Mapping[str, DataDir]) -> DataDir:
    """One dir of several (Kaldi's combine_data.sh): a fold's training set is the union of sessions or
    speakers.  A table missing from some part is left out of the whole, with the parts that lack it
    named in the log, because keeping it would reject every utterance of those parts; an utterance id
    in two parts is an error naming both, since its tables could not say which part it is."""
    names = [set(d.tables) for d in parts.values()]
    shared = set.intersection(*names) if names else set()
    for table in sorted(set.union(*names) - shared if names else ()):
        lacking = [k for k, d in parts.items() if table not in d.tables]
        log.warning("combining %s: %s is left out (not in %s)", ", ".join(parts), table, ", ".join(lacking))
    whole = DataDir({name: {} for name in sorted(shared)})
    seen: dict[str, str] = {}
    for key, data in parts.items():
        for utt in list(data.tables.get("utt2spk", {})) + list(data.rejected):
            if utt in seen:
                raise DataDirError(key, None, f"utterance '{utt}' is also in {seen[utt]}: cannot combine them")
            seen[utt] = key
        for name in shared:
            whole.tables[name].update(data.tables[name])
        whole.rejected.update(data.rejected)
    for name in shared:
        whole.tables[name] = {k: whole.tables[name][k] for k in c_sorted(whole.tables[name])}
    return whole


def replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, replacing it; at every instant one of the two is whole."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old.{os.getpid()}")
        os.rename(dst, old)
        os.rename(src, dst)
        shutil.rmtree(old)
    else:
        os.rename(src, dst)


# --- validation ---------------------------------------------------------------

def validate_data_dir(path: Path | str, labels: Iterable[str] | None = EMOTIONS,
                      check_audio: bool = True) -> DataDir:
    """Check a data dir the way Kaldi's validate_data_dir.sh does, plus our tables.

    Raises :class:`DataDirError` at the first problem, naming the file and line.
    Returns the loaded dir so callers do not read it twice.
    """
    path = Path(path)
    for name in REQUIRED:
        if not (path / name).exists():
            raise DataDirError(path / name, None, "required file is missing")
    data = DataDir.load(path)
    labels = None if labels is None else set(labels)  # None: a corpus' own labels, before stage 1 maps them
    utt2spk = data["utt2spk"]
    if not utt2spk:
        raise DataDirError(path / "utt2spk", None, "is empty")

    def lineno_of(name: str, key: str) -> int:
        return c_sorted(data[name]).index(key) + 1

    # Speaker-prefixed ids make "sort by utt" and "sort by speaker" agree,
    # which is what lets spk2utt and every per-utt table share one order.
    for i, (utt, spk) in enumerate(utt2spk.items(), 1):
        if not utt.startswith(spk):
            raise DataDirError(path / "utt2spk", i,
                               f"utterance id '{utt}' does not start with its speaker id '{spk}'")

    keys = set(utt2spk)
    for name, table in data.tables.items():
        if name == "segments":
            continue
        if name == "wav.scp" and "segments" in data:
            continue  # wav.scp is keyed by recording when segments exist
        for i, utt in enumerate(table, 1):
            if utt not in keys:
                raise DataDirError(path / name, i, f"id '{utt}' is not in utt2spk")
        if len(table) < len(keys):
            missing = next(u for u in utt2spk if u not in table)
            raise DataDirError(path / name, None,
                               f"id '{missing}' (utt2spk line {lineno_of('utt2spk', missing)}) is missing")

    if (path / "spk2utt").exists():
        expected = spk2utt_of(utt2spk)
        got = read_table(path / "spk2utt")
        if got != expected:
            bad = next((s for s in c_sorted(set(got) | set(expected))
                        if got.get(s) != expected.get(s)), None)
            raise DataDirError(path / "spk2utt", None,
                               f"disagrees with utt2spk for speaker '{bad}' (regenerate it)")

    if "segments" in data:
        recos = data["wav.scp"]
        for i, (utt, value) in enumerate(data["segments"].items(), 1):
            fields = value.split()
            if len(fields) != 3:
                raise DataDirError(path / "segments", i, "expected '<utt> <reco> <start> <end>'")
            reco, start, end = fields[0], float(fields[1]), float(fields[2])
            if reco not in recos:
                raise DataDirError(path / "segments", i, f"recording '{reco}' is not in wav.scp")
            if not 0 <= start < end:
                raise DataDirError(path / "segments", i, f"bad times {start} {end}")

    if check_audio:
        for i, (key, value) in enumerate(data["wav.scp"].items(), 1):
            if value.endswith("|"):
                continue  # a pipe command: checked when it is read
            if not Path(value).is_file():
                raise DataDirError(path / "wav.scp", i, f"audio file of '{key}' not found: {value}")

    for name in ("utt2emo",):
        for i, (utt, label) in enumerate(data.tables.get(name, {}).items(), 1):
            if labels is not None and label not in labels:
                raise DataDirError(path / name, i,
                                   f"unknown label '{label}' for '{utt}' (known: {', '.join(sorted(labels))})")

    for i, (utt, value) in enumerate(data.tables.get("utt2dist", {}).items(), 1):
        try:
            dist = parse_dist(value)
        except ValueError as e:
            raise DataDirError(path / "utt2dist", i, f"{utt}: {e}") from None
        for label, p in dist.items():
            if labels is not None and label not in labels:
                raise DataDirError(path / "utt2dist", i, f"unknown label '{label}' for '{utt}'")
            if not (0 <= p <= 1):
                raise DataDirError(path / "utt2dist", i, f"probability {p} of '{label}' is not in [0, 1]")
        if abs(sum(dist.values()) - 1) > 1e-3:
            raise DataDirError(path / "utt2dist", i,
                               f"probabilities of '{utt}' sum to {sum(dist.values()):.4f}, not 1")

    for i, (utt, value) in enumerate(data.tables.get("utt2dur", {}).items(), 1):
        try:
            dur = float(value)
        except ValueError:
            dur = float("nan")
        if not math.isfinite(dur) or dur <= 0:
            raise DataDirError(path / "utt2dur", i, f"duration '{value}' of '{utt}' is not a positive number")

    for i, (utt, value) in enumerate(data.tables.get("utt2attr", {}).items(), 1):
        try:
            parse_kv(value)
        except ValueError as e:
            raise DataDirError(path / "utt2attr", i, f"{utt}: {e}") from None

    for i, (utt, value) in enumerate(data.tables.get("utt2qa", {}).items(), 1):
        try:
            parse_qa(value)
        except ValueError as e:
            raise DataDirError(path / "utt2qa", i, f"{utt}: {e}") from None

    for i, (utt, value) in enumerate(data.tables.get("utt2sentiment", {}).items(), 1):
        if value not in SENTIMENTS:
            raise DataDirError(path / "utt2sentiment", i,
                               f"unknown sentiment '{value}' for '{utt}' (known: {', '.join(SENTIMENTS)})")

    return data
