"""Batches from the shards of stage 4, for every training and decoding stage.

An epoch is *planned* before any audio is read.  The manifest lists every
utterance's duration in shard order, so the plan is computed from it alone:

1. shard order: shuffled with ``seed + epoch`` (or kept, ``shuffle=False``);
2. ranks take every ``world_size``-th shard of that order, then each
   DataLoader worker of a rank every ``num_workers``-th shard of the rank's;
3. each worker streams its shards' (utt, dur) through a shuffle buffer of
   ``shuffle_buffer`` samples and a sort buffer of ``bucket_size`` samples: the
   sort buffer is sorted by duration and cut greedily into batches of at most
   ``batch_size`` utterances and/or ``max_seconds`` padded seconds (batch size
   x longest utterance), and the batches of one buffer are yielded in random
   order.  Similar lengths share a batch, so little of a batch is padding;
4. every rank gets the same number of batches, because a DDP rank that runs
   out early leaves the others waiting in an all-reduce forever.  The ranks
   each compute all ranks' plans (cheap, metadata only) and then
   ``uneven="pad"`` repeats the last batches of a rank's least-loaded workers
   up to the largest rank's count, or ``uneven="drop"`` cuts every rank to
   the smallest count.  When the shards split evenly over ranks and workers
   and batching is by ``batch_size``, counts agree and one epoch over all
   ranks and workers yields every utterance exactly once; otherwise "pad"
   repeats a few utterances (dedup by utt id when decoding) and "drop" leaves
   a few out of this epoch.

Then each worker reads its shards in plan order and emits a batch as soon as
all its utterances have been read, keeping only samples that a pending batch
needs; the shuffle and sort buffers bound that memory, which is why shuffling
is a buffer and not a permutation of the whole epoch.

``split`` says what a rank's share is.  ``"shards"`` (above) reads each shard
on one rank only: the cheapest reading, and what pre-training on a large
corpus wants.  ``"rows"`` (ESPnet's way) plans the epoch as one process would
and gives rank r the rows r, r + world_size, ... of every batch: ``batch_size``
is then the global batch, and N processes train on exactly the batches one
process would (a batch with fewer rows than ranks is left out on every rank,
and counted in ``skipped``).  ``"batches"`` gives rank r the whole batches r,
r + world_size, ... of the one-process plan: decoding jobs split this way give
the hypotheses of one job, batch for batch.  In both, every rank reads every
shard, skipping by seek the samples it does not need.

Because the plan is a pure function of (manifest, seed, epoch, rank,
world_size, num_workers), a position is just (epoch, batches yielded): on
resume each worker works out how many of its own batches the DataLoader had
already delivered (it takes them round-robin from the workers) and skips them,
without reading the shards they came from; the new DataLoader's worker 0 takes
the role of the worker whose turn was next, so the round-robin order goes on.  webdataset's own pipeline splits
and shuffles shards by itself with state that cannot be fast-forwarded, so the
tars (plain webdataset format) are read here with :mod:`tarfile`.
"""
from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path
from typing import Collection, Iterable, Iterator, Sequence

import numpy as np
import soundfile as sf
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from local.data.shards import load_manifest

log = logging.getLogger(__name__)

Batch = list[str]  # utterance ids
SPLITS = ("shards", "rows", "batches")  # what a rank's share of an epoch is (module doc)


# --- planning -----------------------------------------------------------------

def shuffle_buffer(items: Iterable, size: int, rng: np.random.Generator) -> list:
    """Approximate shuffle of a stream: emit a random element of a ``size``-element buffer.

    An item is emitted at most ``size`` items after it arrives, which is what
    bounds the reader's memory.
    """
    items = list(items)
    buf, out = items[:size], []
    picks = rng.integers(len(buf), size=len(items) - len(buf)) if buf else []
    for item, i in zip(items[len(buf):], picks):
        out.append(buf[i])
        buf[i] = item
    rng.shuffle(buf)
    return out + buf


def cut_batches(items: Iterable[tuple[str, float]], batch_size: int | None,
                max_seconds: float | None) -> Iterator[Batch]:
    """Greedy batches in stream order: close a batch when one more utterance would
    exceed ``batch_size`` utterances or ``max_seconds`` of padded audio.

    An utterance longer than ``max_seconds`` gets a batch of its own.
    """
    batch, longest = [], 0.0
    for utt, dur in items:
        grown = max(longest, dur)
        full = ((batch_size is not None and len(batch) + 1 > batch_size)
                or (max_seconds is not None and (len(batch) + 1) * grown > max_seconds))
        if batch and full:
            yield batch
            batch, grown = [], dur
        batch.append(utt)
        longest = grown
    if batch:
        yield batch


def bucket_batches(items: Iterable[tuple[str, float]], bucket_size: int | None,
                   batch_size: int | None, max_seconds: float | None,
                   rng: np.random.Generator | None) -> Iterator[Batch]:
    """Sort each run of ``bucket_size`` utterances by duration, then cut it into batches.

    The batches of one bucket are shuffled when ``rng`` is given, so a batch's
    length does not follow its position in the epoch.  ``bucket_size`` None
    (or < 2) cuts the stream as it comes, unsorted.
    """
    if not bucket_size or bucket_size < 2:
        yield from cut_batches(items, batch_size, max_seconds)
        return

    def flush(bucket):
        batches = list(cut_batches(sorted(bucket, key=lambda x: (x[1], x[0])), batch_size, max_seconds))
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    bucket = []
    for item in items:
        bucket.append(item)
        if len(bucket) == bucket_size:
            yield from flush(bucket)
            bucket = []
    if bucket:
        yield from flush(bucket)


def round_robin_taken(counts: Sequence[int], n: int) -> list[int]:
    """How many batches each worker delivered when a DataLoader has yielded ``n``.

    A DataLoader over an IterableDataset takes one batch from each worker in
    turn (worker 0, 1, ...) and drops a worker once it is exhausted.
    """
    if n > sum(counts):
        raise ValueError(f"position {n} is past the end of the epoch ({sum(counts)} batches)")
    taken = [0] * len(counts)
    while n:
        for w, count in enumerate(counts):
            if n and taken[w] < count:
                taken[w] += 1
                n -= 1
    return taken


def next_worker(counts: Sequence[int], n: int) -> int:
    """The worker that delivers batch ``n`` (0-based) in round-robin order; 0 past the end."""
    if n >= sum(counts):
        return 0
    before, after = round_robin_taken(counts, n), round_robin_taken(counts, n + 1)
    return next(w for w in range(len(counts)) if after[w] > before[w])


def equalise(worker_batches: list[list[Batch]], target: int) -> list[list[Batch]]:
    """Make one rank's workers yield ``target`` batches in all (see the module doc)."""
    counts = [len(b) for b in worker_batches]
    if target <= sum(counts):
        return [b[:k] for b, k in zip(worker_batches, round_robin_taken(counts, target))]
    out = [list(b) for b in worker_batches]
    donors = [w for w, c in enumerate(counts) if c]
    for _ in range(target - sum(counts)):
        w = min(donors, key=lambda v: (len(out[v]), v))
        extra = len(out[w]) - counts[w]
        # the worker's own last batches, newest first: their samples were read
        # recently, so holding them for the repeat costs little memory
        out[w].append(worker_batches[w][counts[w] - 1 - extra % counts[w]])
    return out


# --- reading ------------------------------------------------------------------

def _tar_samples(path: Path, wanted) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of the samples of a tar whose key is in ``wanted``.

    Members of unwanted samples are skipped by seeking, not read.
    """
    with tarfile.open(path, "r:") as tar:
        key, fields = None, {}
        for member in tar:
            name, _, ext = member.name.partition(".")
            if name != key:
                if fields:
                    yield key, fields
                key, fields = name, {}
            if name in wanted and member.isfile():
                fields[ext] = tar.extractfile(member).read()
        if fields:
            yield key, fields


def _decode(key: str, fields: dict[str, bytes], audio_format: str, load_audio: bool,
            features: Sequence[str], path: Path) -> dict:
    sample = {"utt": key, "meta": json.loads(fields["json"]),
              "targets": json.loads(fields["targets.json"]) if "targets.json" in fields else []}
    if load_audio:
        sample["wav"] = sf.read(io.BytesIO(fields[audio_format]), dtype="float32")[0]
    sample["feats"] = {}
    for name in features:
        if f"{name}.npy" not in fields:
            raise KeyError(f"{path}: sample '{key}' has no cached feature '{name}'")
        sample["feats"][name] = np.load(io.BytesIO(fields[f"{name}.npy"]), allow_pickle=False)
    return sample


def pad_arrays(arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad along the first axis: ([B, T, ...], lengths [B])."""
    lens = torch.tensor([len(a) for a in arrays], dtype=torch.long)
    out = torch.zeros((len(arrays), int(lens.max()), *arrays[0].shape[1:]), dtype=torch.float32)
    for i, a in enumerate(arrays):
        out[i, :len(a)] = torch.from_numpy(np.asarray(a, dtype=np.float32))
    return out, lens


def collate(samples: list[dict]) -> dict:
    """{"utts", "wav" [B, T] zero-padded, "wav_lens" [B], "meta", "targets"} (+ "feats", "feat_lens").

    "wav"/"wav_lens" are absent when audio was not loaded; "feats"[name] is
    [B, T_max, ...] padded along the feature's first axis.
    """
    batch = {"utts": [s["utt"] for s in samples], "meta": [s["meta"] for s in samples],
             "targets": [s["targets"] for s in samples]}
    if "wav" in samples[0]:
        batch["wav"], batch["wav_lens"] = pad_arrays([s["wav"] for s in samples])
    if samples[0]["feats"]:
        batch["feats"], batch["feat_lens"] = {}, {}
        for name in samples[0]["feats"]:
            batch["feats"][name], batch["feat_lens"][name] = pad_arrays([s["feats"][name] for s in samples])
    return batch


# --- the dataset ----------------------------------------------------------------

class ShardDataset(IterableDataset):
    """Yields collated batches (use with ``DataLoader(batch_size=None)``) of one rank.

    A worker holds at most about ``shuffle_buffer + bucket_size`` decoded
    utterances (plus those of "pad" repeats), so size those to its memory.
    ``features`` names cached features to load; ``load_audio=False`` skips
    decoding audio for stages that only use those.

    :class:`ShardLoader` wraps it with a DataLoader and keeps the position;
    use this class directly only when resuming mid-epoch is not needed.
    """

    def __init__(self, shard_dir: Path | str, *, batch_size: int | None = None,
                 max_seconds: float | None = None, bucket_size: int | None = 256,
                 shuffle: bool = True, shuffle_buffer: int = 512, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, uneven: str = "pad",
                 split: str = "shards", load_audio: bool = True, features: Sequence[str] = (),
                 utts: Collection[str] | None = None):
        if batch_size is None and max_seconds is None:
            raise ValueError("give batch_size, max_seconds or both")
        if uneven not in ("pad", "drop"):
            raise ValueError(f"uneven must be 'pad' or 'drop', not '{uneven}'")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not '{split}'")
        ddp = dist.is_available() and dist.is_initialized()
        if rank is None:
            rank = dist.get_rank() if ddp else 0
        if world_size is None:
            world_size = dist.get_world_size() if ddp else 1
        self.shard_dir = Path(shard_dir)
        self.manifest = load_manifest(shard_dir)
        missing = sorted(set(features) - set(self.manifest["features"]))
        if missing:
            raise ValueError(f"{shard_dir}: no cached feature(s) {missing}; it has {self.manifest['features']}")
        n_shards = len(self.manifest["shards"])
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if split == "shards" and n_shards < world_size:
            raise ValueError(f"{shard_dir}: {n_shards} shard(s) cannot feed {world_size} ranks; "
                             "re-run stage 4 with a smaller max_shard_size")
        self.batch_size, self.max_seconds, self.bucket_size = batch_size, max_seconds, bucket_size
        self.shuffle, self.shuffle_buffer, self.seed = shuffle, shuffle_buffer, seed
        self.rank, self.world_size, self.uneven, self.split = rank, world_size, uneven, split
        # whose shards a rank streams: its own ("shards"), or all of them, as rank 0 of 1 would
        self._reader, self._readers = (rank, world_size) if split == "shards" else (0, 1)
        self.skipped = 0  # batches of this epoch with fewer rows than ranks ("rows")
        self.load_audio, self.features = load_audio, tuple(features)
        self.epoch, self.start = 0, 0
        # utterances of each shard, in shard order, with their durations; ``utts``: only those
        # (a stage's budgeted subset: the shards are read as they are, the rest skipped)
        if utts is not None:
            unknown = sorted(set(utts) - set(self.manifest["utts"]))
            if unknown:
                raise ValueError(f"{shard_dir}: utterance(s) {unknown[:3]} asked for are not in its manifest")
            utts = set(utts)
        self._shard_utts = []
        offset = 0
        for shard in self.manifest["shards"]:
            n = shard["num_samples"]
            self._shard_utts.append([(u, d) for u, d in zip(self.manifest["utts"][offset:offset + n],
                                                            self.manifest["durs"][offset:offset + n])
                                     if utts is None or u in utts])
            offset += n
        self._plans: dict[tuple[int, int], list[list[Batch]]] = {}

    def set_position(self, epoch: int, batches: int = 0) -> None:
        """Start the next iteration at batch ``batches`` (of this rank) of ``epoch``."""
        self.epoch, self.start = epoch, batches

    def worker_shards(self, epoch: int, rank: int, worker: int, num_workers: int) -> list[int]:
        order = np.arange(len(self._shard_utts))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        return [int(i) for i in order[rank::self._readers][worker::num_workers]]

    def _stream_batches(self, epoch: int, rank: int, worker: int, num_workers: int) -> list[Batch]:
        items = (item for i in self.worker_shards(epoch, rank, worker, num_workers)
                 for item in self._shard_utts[i])
        rng = None
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch, rank, worker, num_workers])
            items = shuffle_buffer(items, self.shuffle_buffer, rng)
        return list(bucket_batches(items, self.bucket_size, self.batch_size, self.max_seconds, rng))

    def plan(self, epoch: int, num_workers: int) -> list[list[Batch]]:
        """This rank's batches of ``epoch``, one list per DataLoader worker, after equalising."""
        key = (epoch, num_workers)
        if key not in self._plans and self.split != "shards":
            whole = [self._stream_batches(epoch, 0, w, num_workers) for w in range(num_workers)]
            r, n = self.rank, self.world_size
            if self.split == "rows":
                self.skipped = sum(len(b) < n for batches in whole for b in batches)
                if self.skipped and r == 0:
                    log.warning("%s: %d batch(es) of epoch %d have fewer utterances than the %d ranks; left out "
                                "on every rank", self.shard_dir, self.skipped, epoch, n)
                mine = [[b[r::n] for b in batches if len(b) >= n] for batches in whole]
            else:  # "batches": the one-process order is worker-major round robin
                mine = [[b for j, b in enumerate(batches) if (j * num_workers + w) % n == r]
                        for w, batches in enumerate(whole)]
            self._plans = {key: mine}
        if key not in self._plans:
            totals = []
            for rank in range(self.world_size):
                per_worker = [self._stream_batches(epoch, rank, w, num_workers) for w in range(num_workers)]
                totals.append(sum(len(b) for b in per_worker))
                if rank == self.rank:
                    mine = per_worker
            target = max(totals) if self.uneven == "pad" else min(totals)
            self._plans = {key: equalise(mine, target)}  # keep one epoch: plans can be large
        return self._plans[key]

    def num_batches(self, epoch: int, num_workers: int) -> int:
        """Batches of ``epoch`` on this rank (the same on every rank)."""
        return sum(len(b) for b in self.plan(epoch, num_workers))

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        plan = self.plan(self.epoch, num_workers)
        counts = [len(b) for b in plan]
        # A fresh DataLoader asks its worker 0 first: that worker plays the
        # plan's worker whose turn is next, the others follow in cyclic order.
        role = (worker + next_worker(counts, self.start)) % num_workers
        skip = round_robin_taken(counts, self.start)[role]
        shards = self.worker_shards(self.epoch, self._reader, role, num_workers)
        yield from self._read(plan[role][skip:], shards)

    def _read(self, batches: list[Batch], shards: list[int]) -> Iterator[dict]:
        """Stream ``shards`` and emit ``batches`` in order as soon as each is complete."""
        need = Counter(utt for batch in batches for utt in batch)
        ready: dict[str, dict] = {}
        done = 0
        for i in shards:
            if done == len(batches):
                return
            path = self.shard_dir / self.manifest["shards"][i]["name"]
            if not any(need[utt] for utt, _ in self._shard_utts[i]):
                continue  # everything in it was yielded before the resume point
            for key, fields in _tar_samples(path, {utt for utt, _ in self._shard_utts[i] if need[utt]}):
                ready[key] = _decode(key, fields, self.manifest["audio_format"], self.load_audio,
                                     self.features, path)
                while done < len(batches) and all(u in ready for u in batches[done]):
                    yield collate([ready[u] for u in batches[done]])
                    for u in batches[done]:
                        need[u] -= 1
                        if not need[u]:
                            del ready[u]
                    done += 1
        if done < len(batches):
            lost = [u for u in batches[done] if u not in ready]
            raise RuntimeError(f"{self.shard_dir}: utterances {lost[:3]} of the manifest are not in "
                               "their shards; the dir changed after it was written (re-run stage 4)")


# --- the loader -------------------------------------------------------------------

def _as_is(batch):
    return batch


class ShardLoader:
    """A resumable DataLoader over a shard dir: iterate it once per epoch.

    ``for batch in loader`` runs the rest of the current epoch and then moves
    to the next; breaking out keeps the position, so the next ``for`` goes on
    from there.  ``state_dict()`` is {epoch, batches yielded in it, ...}: save
    it with the model checkpoint; a new loader that loads it yields exactly
    the batches the uninterrupted run would have yielded next.  ``world_size``,
    ``num_workers`` and ``seed`` must match on resume (they change the plan);
    when they do not, the saved epoch restarts from its first batch.
    Other arguments go to :class:`ShardDataset`.
    """

    def __init__(self, shard_dir: Path | str, *, num_workers: int = 0, pin_memory: bool = False,
                 prefetch_factor: int | None = None, **dataset_kwargs):
        self.dataset = ShardDataset(shard_dir, **dataset_kwargs)
        self.num_workers, self.pin_memory, self.prefetch_factor = num_workers, pin_memory, prefetch_factor
        self.epoch, self.batches = 0, 0

    def __len__(self) -> int:
        """Batches in the current epoch (equal on every rank), including those already yielded."""
        return self.dataset.num_batches(self.epoch, max(self.num_workers, 1))

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.batches = epoch, 0

    def __iter__(self) -> Iterator[dict]:
        if self.batches >= len(self):
            self.set_epoch(self.epoch + 1)
        self.dataset.set_position(self.epoch, self.batches)
        loader = DataLoader(self.dataset, batch_size=None, collate_fn=_as_is, num_workers=self.num_workers,
                            pin_memory=self.pin_memory, prefetch_factor=self.prefetch_factor,
                            in_order=True)
        for batch in loader:
            self.batches += 1
            yield batch
        self.set_epoch(self.epoch + 1)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.batches, "seed": self.dataset.seed,
                "world_size": self.dataset.world_size, "num_workers": self.num_workers}

    def load_state_dict(self, state: dict) -> None:
        same = all(state[k] == v for k, v in (("seed", self.dataset.seed),
                                               ("world_size", self.dataset.world_size),
                                               ("num_workers", self.num_workers)))
        if same:
            self.epoch, self.batches = state["epoch"], state["batches"]
        else:
            log.warning("loader state was saved with seed/world_size/num_workers %s/%s/%s, now %s/%s/%s: "
                        "restarting epoch %d from its first batch", state["seed"], state["world_size"],
                        state["num_workers"], self.dataset.seed, self.dataset.world_size,
                        self.num_workers, state["epoch"])
            self.set_epoch(state["epoch"])
