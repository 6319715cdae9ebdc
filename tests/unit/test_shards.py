"""Stage 4: shard writing (local.data.shards) and the loader that streams them (local.data.loader)."""
from __future__ import annotations

import io
import json
import math
import multiprocessing
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import webdataset as wds

from local.bin.shards import main as shards_main
from local.data.audio import read_audio, write_wav
from local.data.kaldi import DataDir, DataDirError, format_dist, read_table
from local.data.labels import EMOTIONS
from local.data.loader import ShardDataset, ShardLoader, cut_batches, round_robin_taken
from local.data.shards import load_manifest, read_targets, write_shards
from local.utils.hydra import compose

SR = 16000


def make_data_dir(data: Path, n: int = 20, n_spk: int = 4, seed: int = 0) -> Path:
    """``n`` sine-plus-noise utterances of 0.3-2.5 s, all tables and a targets.jsonl."""
    rng = np.random.default_rng(seed)
    wavs = data.with_name(f"{data.name}_wavs")
    wavs.mkdir(parents=True, exist_ok=True)
    durs = rng.permutation(np.linspace(0.3, 2.5, n))
    tables = {name: {} for name in ("wav.scp", "utt2spk", "text", "utt2emo", "utt2dist", "utt2lang",
                                    "utt2dur", "utt2int", "utt2subset", "utt2attr")}
    targets = []
    for i in range(n):
        spk = f"spk{i % n_spk}"
        utt = f"{spk}-utt{i:03d}"
        t = np.arange(int(durs[i] * SR)) / SR
        wav = 0.3 * np.sin(2 * np.pi * (120 + 20 * i) * t) + 0.05 * rng.standard_normal(len(t))
        write_wav(wavs / f"{utt}.wav", wav.astype(np.float32))
        label = EMOTIONS[i % len(EMOTIONS)]
        tables["wav.scp"][utt] = str(wavs / f"{utt}.wav")
        tables["utt2spk"][utt] = spk
        tables["text"][utt] = "今天很好" if i % 5 == 0 else f"sentence number {i}"
        tables["utt2emo"][utt] = label
        tables["utt2dist"][utt] = format_dist({label: 0.75, "neutral" if label != "neutral" else "anger": 0.25})
        tables["utt2lang"][utt] = "cmn" if i % 5 == 0 else "en"
        tables["utt2dur"][utt] = f"{durs[i]:.3f}"
        tables["utt2int"][utt] = ("low", "mid", "high")[i % 3]
        tables["utt2subset"][utt] = "conflict" if i % 2 else "consistent"
        tables["utt2attr"][utt] = f"pitch=high energy=low pitch_hz={100 + i}.5"
        if i % 2 == 0:
            targets += [{"utt": utt, "type": "c2ser_explicit", "target": f"why {i}", "label": label},
                        {"utt": utt, "type": "summarize", "target": f"sum {i}", "label": label}]
    DataDir(tables).save(data)
    targets.append({"utt": "spk9-not-in-data", "type": "summarize", "target": "x", "label": "fear"})
    (data / "targets.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in targets),
                                        encoding="utf-8")
    return data


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("corpus") / "data")


@pytest.fixture(scope="module")
def shard_dir(data_dir, tmp_path_factory) -> Path:
    """20 utterances in 4 shards of 5, spread over shards in a seeded order."""
    out = tmp_path_factory.mktemp("dump") / "shards"
    write_shards(data_dir, out, 5, targets_path=data_dir / "targets.jsonl", shuffle_seed=0)
    return out


def collect(loader) -> list[dict]:
    return list(loader)


def utts_of(batches) -> list[str]:
    return [u for b in batches for u in b["utts"]]


# --- writing --------------------------------------------------------------------

def test_round_trip_through_webdataset(data_dir, shard_dir):
    data = DataDir.load(data_dir)
    targets = read_targets(data_dir / "targets.jsonl")
    urls = [str(shard_dir / s["name"]) for s in load_manifest(shard_dir)["shards"]]
    seen = []
    for sample in wds.WebDataset(urls, shardshuffle=False):
        utt = sample["__key__"]
        seen.append(utt)
        wav, sr = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
        ref = read_audio(data["wav.scp"][utt], utt)
        assert sr == SR and wav.shape == ref.shape
        assert np.abs(wav - ref).max() <= 1 / 32768
        meta = json.loads(sample["json"])
        assert meta == {
            "utt": utt, "spk": data["utt2spk"][utt], "label": data["utt2emo"][utt],
            "dist": {k: float(v) for k, v in (x.split(":") for x in data["utt2dist"][utt].split())},
            "lang": data["utt2lang"][utt], "text": data["text"][utt], "subset": data["utt2subset"][utt],
            "intensity": data["utt2int"][utt],
            "attr": {"pitch": "high", "energy": "low", "pitch_hz": float(data["utt2attr"][utt].split("=")[-1])},
            "dur": len(ref) / SR,
        }
        assert json.loads(sample["targets.json"]) == targets.get(utt, [])
    assert sorted(seen) == data.utts


def test_unmeasured_attributes_survive_the_round_trip(tmp_path):
    """A test set's utt2attr line with unknown levels and nan / -inf values, back from the loader as written."""
    data = make_data_dir(tmp_path / "data", n=4, n_spk=2)
    table = DataDir.load(data)
    utt = table.utts[0]
    table["utt2attr"][utt] = ("pitch=unknown pitch_range=unknown loudness=Low rate=unknown "
                              "f0_hz=nan f0_range_st=nan lufs=-inf phones_per_sec=nan")
    table.save(data)
    write_shards(data, tmp_path / "shards", 2)
    meta = {m["utt"]: m for b in ShardLoader(tmp_path / "shards", batch_size=4, shuffle=False) for m in b["meta"]}
    attr = meta[utt]["attr"]
    assert attr["pitch"] == attr["pitch_range"] == attr["rate"] == "unknown" and attr["loudness"] == "Low"
    assert all(math.isnan(attr[k]) for k in ("f0_hz", "f0_range_st", "phones_per_sec"))
    assert attr["lufs"] == -math.inf
    other = table.utts[1]
    assert meta[other]["attr"]["pitch_hz"] == float(table["utt2attr"][other].split("=")[-1])  # still a number


def test_manifest_counts(data_dir, shard_dir):
    manifest = load_manifest(shard_dir)
    data = DataDir.load(data_dir)
    assert manifest["num_utts"] == 20 and manifest["num_rejected"] == 0
    assert [s["name"] for s in manifest["shards"]] == [f"shard-{i:06d}.tar" for i in range(4)]
    assert [s["num_samples"] for s in manifest["shards"]] == [5, 5, 5, 5]
    assert sorted(manifest["utts"]) == data.utts
    durs = {u: len(read_audio(data["wav.scp"][u])) / SR for u in data.utts}
    assert manifest["durs"] == [durs[u] for u in manifest["utts"]]
    assert manifest["hours"] == pytest.approx(sum(durs.values()) / 3600)
    offset = 0
    for shard in manifest["shards"]:
        utts = manifest["utts"][offset:offset + shard["num_samples"]]
        offset += shard["num_samples"]
        keys = [s["__key__"] for s in wds.WebDataset([str(shard_dir / shard["name"])], shardshuffle=False)]
        assert keys == utts == sorted(utts)  # manifest order is tar order, sorted within a shard
        assert shard["dur"] == pytest.approx(sum(durs[u] for u in utts))
    # the seeded spread mixes speakers: the first shard is not one speaker's block
    first = manifest["utts"][:5]
    assert len({u.split("-")[0] for u in first}) > 1


def test_deterministic_whatever_nj(data_dir, tmp_path):
    a = write_shards(data_dir, tmp_path / "a", 6, targets_path=data_dir / "targets.jsonl", shuffle_seed=3, nj=1)
    b = write_shards(data_dir, tmp_path / "b", 6, targets_path=data_dir / "targets.jsonl", shuffle_seed=3, nj=2)
    assert a == b and len(a["shards"]) == 4 and [s["num_samples"] for s in a["shards"]] == [6, 6, 6, 2]
    for name in [s["name"] for s in a["shards"]] + ["manifest.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_corrupt_wav_rejected_rest_sharded(tmp_path):
    data = make_data_dir(tmp_path / "data", n=8)
    bad = "spk1-utt001"
    Path(DataDir.load(data)["wav.scp"][bad]).write_bytes(b"RIFF not really a wav")
    manifest = write_shards(data, tmp_path / "shards", 3)
    rejected = read_table(tmp_path / "shards" / "rejected")
    assert list(rejected) == [bad] and "unreadable audio" in rejected[bad]
    assert manifest["num_utts"] == 7 and manifest["num_rejected"] == 1 and bad not in manifest["utts"]
    assert sum(s["num_samples"] for s in manifest["shards"]) == 7
    got = utts_of(ShardLoader(tmp_path / "shards", batch_size=4, shuffle=False))
    assert sorted(got) == sorted(manifest["utts"])


def test_bad_targets_line_names_file_and_line(tmp_path):
    path = tmp_path / "targets.jsonl"
    path.write_text('{"utt": "a", "type": "x"}\n{"utt": "b", oops}\n', encoding="utf-8")
    with pytest.raises(DataDirError, match=r"targets.jsonl:2: not valid JSON"):
        read_targets(path)


def test_rerun_skips_complete_dir_and_rewrites_incomplete_or_stale(tmp_path):
    data = make_data_dir(tmp_path / "data", n=6)
    out = tmp_path / "shards"
    write_shards(data, out, 4)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    write_shards(data, out, 4)  # complete and matching: untouched
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp

    # an interrupted run: no manifest, a stray temp shard and a stale extra shard
    (out / "manifest.json").unlink()
    (out / ".shard-000005.tar.tmp").write_bytes(b"half")
    (out / "shard-000009.tar").write_bytes(b"stale")
    with pytest.raises(FileNotFoundError, match="incomplete"):
        ShardLoader(out, batch_size=2)
    manifest = write_shards(data, out, 4)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-000000.tar", "shard-000001.tar"]
    assert manifest["num_utts"] == 6

    # a changed input table makes the dir stale: rewritten with the new label
    table = read_table(data / "utt2emo")
    utt = next(iter(table))
    table[utt] = "fear" if table[utt] != "fear" else "anger"
    (data / "utt2emo").write_text("".join(f"{k} {v}\n" for k, v in table.items()))
    before = write_shards(data, out, 4)
    meta = {m["utt"]: m for b in ShardLoader(out, batch_size=6, shuffle=False) for m in b["meta"]}
    assert meta[utt]["label"] == table[utt]

    # new targets rewrite the shards, but the manifest's data part (audio, metadata) stays what it was:
    # stage 5, which reads no targets, stays up to date
    (data / "targets.jsonl").write_text(json.dumps({"utt": utt, "type": "c2ser_implicit", "target": "x"}) + "\n")
    after = write_shards(data, out, 4, targets_path=data / "targets.jsonl")
    assert after["fingerprint"] != before["fingerprint"] and after["parts"]["targets"] != before["parts"]["targets"]
    assert after["parts"]["data"] == before["parts"]["data"]


def test_cached_features_hook(tmp_path):
    data = make_data_dir(tmp_path / "data", n=6)
    write_shards(data, tmp_path / "shards", 3, features={"energy": frame_energy}, nj=2)
    loader = ShardLoader(tmp_path / "shards", batch_size=3, shuffle=False, load_audio=False,
                         features=("energy",))
    wav_scp = DataDir.load(data)["wav.scp"]
    for batch in loader:
        assert "wav" not in batch
        for i, utt in enumerate(batch["utts"]):
            ref = frame_energy(read_audio(wav_scp[utt]))
            n = int(batch["feat_lens"]["energy"][i])
            assert n == len(ref)
            np.testing.assert_allclose(batch["feats"]["energy"][i, :n].numpy(), ref, rtol=1e-6)
            assert not batch["feats"]["energy"][i, n:].any()


def frame_energy(wav: np.ndarray) -> np.ndarray:
    """Mean power of 10 ms frames, [frames, 1]: a stand-in for a frozen encoder's output."""
    frames = wav[: len(wav) // 160 * 160].reshape(-1, 160)
    return (frames ** 2).mean(axis=1, keepdims=True).astype(np.float32)


def slow_energy(wav: np.ndarray) -> np.ndarray:
    time.sleep(0.05)
    return frame_energy(wav)


def test_two_writers_of_one_dir_take_turns(tmp_path):
    """Two experiments building the same feature cache at once: both get the whole dir."""
    data = make_data_dir(tmp_path / "data", n=8)
    args = (data, tmp_path / "shards", 3)
    ctx = multiprocessing.get_context("fork")
    other = ctx.Process(target=write_shards, args=args, kwargs={"features": {"energy": slow_energy}})
    other.start()
    manifest = write_shards(*args, features={"energy": slow_energy})
    other.join()
    assert other.exitcode == 0
    assert load_manifest(tmp_path / "shards") == manifest
    assert manifest["num_utts"] == 8
    assert not list((tmp_path / "shards").glob(".*.tmp"))


def test_entry_point_writes_every_set_and_skips_on_rerun(tmp_path):
    for name in ("train", "dev", "test"):
        make_data_dir(tmp_path / "data" / name, n=4, n_spk=2, seed=len(name))
    (tmp_path / "data" / "dev" / "targets.jsonl").unlink()
    cfg = compose([f"data_root={tmp_path / 'data'}", f"dump_root={tmp_path / 'dump'}", "nj=1",
                   "train_set=train", "dev_set=dev", "test_sets=[test]", "shards.max_shard_size=2",
                   "shards.audio_format=wav"])
    shards_main(cfg)
    for name in ("train", "dev", "test"):
        manifest = load_manifest(tmp_path / "dump" / name / "shards")
        assert manifest["num_utts"] == 4 and manifest["audio_format"] == "wav"
        assert manifest["has_targets"] == (name != "dev")
    shard = tmp_path / "dump" / "train" / "shards" / "shard-000000.tar"
    stamp = shard.stat().st_mtime_ns
    shards_main(cfg)
    assert shard.stat().st_mtime_ns == stamp
    batch = next(iter(ShardLoader(tmp_path / "dump" / "train" / "shards", batch_size=4, shuffle=False)))
    assert batch["wav"].shape[0] == 4 and batch["wav"].dtype == torch.float32


# --- loading ------------------------------------------------------------------

def test_collate_pads_with_zeros(data_dir, shard_dir):
    wav_scp = DataDir.load(data_dir)["wav.scp"]
    targets = read_targets(data_dir / "targets.jsonl")
    for batch in ShardLoader(shard_dir, batch_size=4, shuffle=False):
        assert batch["wav"].dtype == torch.float32 and batch["wav_lens"].dtype == torch.long
        assert batch["wav"].shape == (len(batch["utts"]), int(batch["wav_lens"].max()))
        for i, utt in enumerate(batch["utts"]):
            ref = read_audio(wav_scp[utt])
            n = int(batch["wav_lens"][i])
            assert n == len(ref) and batch["meta"][i]["utt"] == utt
            assert np.abs(batch["wav"][i, :n].numpy() - ref).max() <= 1 / 32768
            assert not batch["wav"][i, n:].any()
            assert batch["targets"][i] == targets.get(utt, [])


def test_exactly_once_over_two_ranks_and_two_workers(data_dir, shard_dir):
    per_rank = [collect(ShardLoader(shard_dir, rank=r, world_size=2, num_workers=2, batch_size=2,
                                    bucket_size=4, shuffle_buffer=3, seed=7)) for r in range(2)]
    counts = Counter(u for batches in per_rank for u in utts_of(batches))
    assert sorted(counts) == DataDir.load(data_dir).utts and set(counts.values()) == {1}
    assert len(per_rank[0]) == len(per_rank[1])
    # each rank reads whole shards: its utterances are exactly those of its shards
    manifest = load_manifest(shard_dir)
    shard_of = {u: i // 5 for i, u in enumerate(manifest["utts"])}
    shards = [{shard_of[u] for u in utts_of(b)} for b in per_rank]
    assert len(shards[0]) == len(shards[1]) == 2 and not shards[0] & shards[1]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_rows_split_gives_each_rank_its_rows_of_one_process_batches(shard_dir, num_workers):
    """split="rows" (ESPnet's DDP split): the ranks' batches, put back together, are one process' batches."""
    kwargs = dict(num_workers=num_workers, batch_size=4, bucket_size=8, shuffle_buffer=6, seed=3)
    for epoch in (0, 1):
        one = ShardLoader(shard_dir, **kwargs)
        one.set_epoch(epoch)
        whole = [b["utts"] for b in one]
        ranks = []
        for r in range(2):
            loader = ShardLoader(shard_dir, rank=r, world_size=2, split="rows", **kwargs)
            loader.set_epoch(epoch)
            ranks.append([b["utts"] for b in loader])
        assert len(ranks[0]) == len(ranks[1]) == len(whole)
        for batch, mine, theirs in zip(whole, *ranks):
            assert mine == batch[0::2] and theirs == batch[1::2]


def test_rows_split_leaves_out_batches_smaller_than_the_world_on_every_rank(shard_dir):
    kwargs = dict(batch_size=3, bucket_size=20, shuffle=False, split="rows")  # 20 = 6 x 3 + 2
    whole = ShardLoader(shard_dir, batch_size=3, bucket_size=20, shuffle=False)
    sizes = [len(b["utts"]) for b in whole]
    ranks = [ShardLoader(shard_dir, rank=r, world_size=3, **kwargs) for r in range(3)]
    got = [[b["utts"] for b in loader] for loader in ranks]
    assert sorted(sizes) == [2, 3, 3, 3, 3, 3, 3]
    assert [len(g) for g in got] == [6, 6, 6] and ranks[0].dataset.skipped == 1
    assert Counter(u for g in got for b in g for u in b).most_common(1)[0][1] == 1


def test_batches_split_gives_each_job_whole_batches_of_the_one_job_plan(shard_dir):
    kwargs = dict(batch_size=3, shuffle=False)
    whole = [b["utts"] for b in ShardLoader(shard_dir, **kwargs)]
    jobs = [[b["utts"] for b in ShardLoader(shard_dir, rank=r, world_size=3, split="batches", **kwargs)]
            for r in range(3)]
    assert jobs == [whole[0::3], whole[1::3], whole[2::3]]
    with pytest.raises(ValueError, match="split must be one of"):
        ShardLoader(shard_dir, batch_size=3, split="utts")


@pytest.mark.parametrize("uneven", ["pad", "drop"])
def test_uneven_shards_give_every_rank_the_same_number_of_batches(data_dir, tmp_path, uneven):
    write_shards(data_dir, tmp_path / "s", 6)  # 6 6 6 2
    per_rank = [collect(ShardLoader(tmp_path / "s", rank=r, world_size=2, num_workers=2, batch_size=2,
                                    shuffle=False, uneven=uneven)) for r in range(2)]
    sizes = {len(b) for b in per_rank}
    counts = Counter(u for batches in per_rank for u in utts_of(batches))
    if uneven == "pad":  # ranks hold 12 and 8 utterances: 6 batches each, all utterances seen
        assert sizes == {6} and len(counts) == 20 and sum(counts.values()) == 24
    else:  # cut to the smaller rank: 4 batches each, nothing twice
        assert sizes == {4} and set(counts.values()) == {1} and len(counts) == 16


def test_dataloader_takes_workers_round_robin(shard_dir):
    """The resume arithmetic assumes this order; check it against torch's DataLoader."""
    loader = ShardLoader(shard_dir, num_workers=2, max_seconds=3.0, bucket_size=5, seed=1)
    plan = loader.dataset.plan(0, 2)
    got = [b["utts"] for b in loader]
    expected, taken = [], [0, 0]
    for _ in range(len(got)):
        counts = [len(p) for p in plan]
        before = round_robin_taken(counts, len(expected))
        after = round_robin_taken(counts, len(expected) + 1)
        w = 0 if after[0] > before[0] else 1
        expected.append(plan[w][taken[w]])
        taken[w] += 1
    assert got == expected and len(plan[0]) != len(plan[1])  # uneven workers: the hard case


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_continues_with_the_next_batch(shard_dir, num_workers):
    # with 2 workers these settings give workers 7 and 10 batches in epoch 0, so
    # k=15 resumes after worker 0 is exhausted; with 0 workers epoch 0 has 15
    # batches, so k=15 is saved at its very end; k=20 resumes in epoch 1
    kwargs = dict(num_workers=num_workers, max_seconds=2.5, bucket_size=8, shuffle_buffer=4, seed=0)
    full = ShardLoader(shard_dir, **kwargs)
    n0 = len(full)
    reference = collect(full) + collect(full)  # epochs 0 and 1
    assert len(reference[:n0]) == n0 and full.epoch == 2
    assert n0 == (17 if num_workers == 2 else 15)
    if num_workers == 2:
        assert [len(p) for p in full.dataset.plan(0, 2)] == [7, 10]

    for k in (3, 15, 20):
        first = ShardLoader(shard_dir, **kwargs)
        seen = 0
        while seen < k:
            for _ in first:
                seen += 1
                if seen == k:
                    break
        state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
        # (0, n0) when saved right after the last batch of epoch 0: it resumes at (1, 0)
        assert state["epoch"] * n0 + state["batches"] == k

        resumed = ShardLoader(shard_dir, **kwargs)
        resumed.load_state_dict(state)
        rest = collect(resumed) + (collect(resumed) if state["epoch"] == 0 and k < n0 else [])
        assert len(rest) == len(reference) - k
        for a, b in zip(reference[k:], rest):
            assert a["utts"] == b["utts"]
            assert torch.equal(a["wav"], b["wav"]) and torch.equal(a["wav_lens"], b["wav_lens"])
            assert a["meta"] == b["meta"] and a["targets"] == b["targets"]


def test_shuffle_is_seeded_and_changes_per_epoch(shard_dir):
    def order(seed, epoch):
        loader = ShardLoader(shard_dir, batch_size=3, bucket_size=None, seed=seed)
        loader.set_epoch(epoch)
        return utts_of(collect(loader))

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    assert sorted(order(0, 1)) == sorted(order(0, 0))


def padding_ratio(batches) -> float:
    real = sum(int(b["wav_lens"].sum()) for b in batches)
    padded = sum(b["wav"].numel() for b in batches)
    return 1 - real / padded


def test_bucketing_reduces_padding(shard_dir):
    kwargs = dict(max_seconds=4.0, shuffle_buffer=20, seed=0)
    bucketed = collect(ShardLoader(shard_dir, bucket_size=20, **kwargs))
    plain = collect(ShardLoader(shard_dir, bucket_size=None, **kwargs))
    assert sorted(utts_of(bucketed)) == sorted(utts_of(plain))
    for batch in bucketed:  # the batch budget: size x longest <= max_seconds, unless alone
        assert len(batch["utts"]) == 1 or batch["wav"].shape[1] * len(batch["utts"]) <= 4.0 * SR
    assert padding_ratio(bucketed) < 0.1 < padding_ratio(plain)


def test_cut_batches_limits():
    items = [("a", 1.0), ("b", 1.0), ("c", 2.0), ("d", 5.0), ("e", 0.5)]
    assert list(cut_batches(items, None, 4.0)) == [["a", "b"], ["c"], ["d"], ["e"]]
    assert list(cut_batches(items, 2, None)) == [["a", "b"], ["c", "d"], ["e"]]
    assert list(cut_batches(items, 3, 10.0)) == [["a", "b", "c"], ["d", "e"]]


def test_too_few_shards_for_world_size(shard_dir):
    with pytest.raises(ValueError, match="4 shard"):
        ShardDataset(shard_dir, batch_size=2, rank=0, world_size=5)


def test_state_from_another_setup_restarts_its_epoch(shard_dir, caplog):
    saved = ShardLoader(shard_dir, batch_size=2, num_workers=2, seed=3)
    saved.epoch, saved.batches = 1, 4
    loader = ShardLoader(shard_dir, batch_size=2, num_workers=0, seed=3)
    loader.load_state_dict(saved.state_dict())
    assert (loader.epoch, loader.batches) == (1, 0) and "restarting epoch 1" in caplog.text


def test_segments_are_cut_and_bad_ids_rejected(tmp_path):
    t = np.arange(2 * SR) / SR
    write_wav(tmp_path / "rec1.wav", (0.4 * np.sin(2 * np.pi * 200 * t)).astype(np.float32))
    segments = {"spk0-seg1": "rec1 0.0 0.5", "spk0-seg2": "rec1 0.5 1.25",
                "spk0-seg.3": "rec1 1.25 1.5", "spk0-seg4": "rec9 0 1"}
    DataDir({"wav.scp": {"rec1": str(tmp_path / "rec1.wav")}, "segments": segments,
             "utt2spk": {u: "spk0" for u in segments}}).save(tmp_path / "data")
    manifest = write_shards(tmp_path / "data", tmp_path / "shards", 10)
    rejected = read_table(tmp_path / "shards" / "rejected")
    assert sorted(rejected) == ["spk0-seg.3", "spk0-seg4"] and "'.'" in rejected["spk0-seg.3"]
    assert manifest["utts"] == ["spk0-seg1", "spk0-seg2"] and manifest["durs"] == [0.5, 0.75]
    batch = next(iter(ShardLoader(tmp_path / "shards", batch_size=2, shuffle=False)))
    for i, (start, end) in enumerate([(0.0, 0.5), (0.5, 1.25)]):
        ref = read_audio(str(tmp_path / "rec1.wav"), start=start, end=end)
        assert np.abs(batch["wav"][i, :len(ref)].numpy() - ref).max() <= 1 / 32768
