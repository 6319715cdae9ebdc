"""``run.sh --ngpu 0 --nproc 2``: the distributed launch path on any machine (torchrun, gloo, two CPU processes).

A user scales a recipe out by changing ``--ngpu`` / ``--nproc`` and nothing else, and expects the same
experiment: stage 6 under torchrun must train on the batches one process trains on (each rank its rows of
every global batch) with the loss of one process, and stage 9 split into jobs must write the hypotheses of one
job.  On the fake CREMA-D at smoke size (tiny random models), in about two minutes.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers.smoke_recipe import NO_DROPOUT, SFT, build, run, train_losses, valid_loss

from local.models.alm import load_alm


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    corpus = build(tmp / "db")
    run(corpus, tmp / "one", "--stop_stage", "5")
    for other in ("two", "fsdp"):  # the same data, shards and Emotion2Vec-S for each
        shutil.copytree(tmp / "one", tmp / other)
    return corpus, tmp


def test_two_torchrun_processes_train_as_one_process_on_the_same_global_batch(recipe):
    corpus, tmp = recipe
    one = run(corpus, tmp / "one", "--stage", "6", "--stop_stage", "6", "--sft_args", SFT)
    two = run(corpus, tmp / "two", "--ngpu", "0", "--nproc", "2", "--stage", "6", "--stop_stage", "6",
              "--sft_args", SFT)
    log = (tmp / "two" / "exp" / "log" / "6.sft.c2ser.log").read_text()
    assert "tools/torchrun.sh 2 1 -m local.bin.sft" in log.splitlines()[0]  # the command the log starts with
    assert "world size 2" in log and "world size 1" in (tmp / "one" / "exp" / "log" / "6.sft.c2ser.log").read_text()
    want, got = train_losses(tmp / "one" / "exp" / "c2ser" / "sft"), train_losses(tmp / "two" / "exp" / "c2ser" / "sft")
    assert [s for s, _ in want] == [s for s, _ in got] == list(range(1, 9))
    # float sums in another order: ~1e-7 apart; the mean of the two halves' own token means is ~4e-4 off
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=1e-6)
    assert valid_loss(tmp / "two" / "exp" / "c2ser" / "sft") == pytest.approx(
        valid_loss(tmp / "one" / "exp" / "c2ser" / "sft"), rel=1e-6)
    assert len({round(loss, 3) for _, loss in want}) > 4  # a run that learns: the comparison is not of constants
    again = run(corpus, tmp / "two", "--nproc", "1", "--stage", "6", "--stop_stage", "6", "--sft_args", SFT)
    assert "Stage 6 (sft, c2ser): up to date" in again.stdout  # how it ran is not what it made
    assert "Stage 6 (sft, c2ser): up to date" not in one.stdout + two.stdout


def test_fsdp_under_torchrun_trains_as_one_process_and_saves_a_whole_model(recipe):
    corpus, tmp = recipe
    run(corpus, tmp / "fsdp", "--nproc", "2", "--stage", "6", "--stop_stage", "6", "--sft_args", f"{SFT} trainer=fsdp")
    log = (tmp / "fsdp" / "exp" / "log" / "6.sft.c2ser.log").read_text()
    assert "FSDP units: 4 modules" in log and "world size 2" in log
    assert log.count("saved ") == 2  # the checkpoint and the model dir, once: the other rank logs warnings only
    sft = tmp / "fsdp" / "exp" / "c2ser" / "sft"
    one = tmp / "one" / "exp" / "c2ser" / "sft"
    if (one / "metrics.jsonl").is_file():  # the first test trained it
        assert [x for _, x in train_losses(sft)] == pytest.approx([x for _, x in train_losses(one)], rel=1e-5)
    # the model dir holds whole tensors, gathered from the shards, equal to the last checkpoint's
    model = load_alm(sft / "model")
    saved = torch.load(sft / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]
    state = model.state_dict()
    trained = [k for k, p in model.named_parameters() if p.requires_grad]
    assert len(trained) > 50 and all(torch.equal(state[k], saved[k]) for k in trained)


def test_decoding_split_into_two_jobs_writes_the_hypotheses_of_one_job(recipe):
    corpus, tmp = recipe
    args = ["--stage", "6", "--stop_stage", "9", "--sft_args", SFT, "--distill_args", NO_DROPOUT,
            "--decode_args", NO_DROPOUT]
    run(corpus, tmp / "one", *args)
    exp = tmp / "one" / "exp"
    decode = exp / "c2ser" / "decode_test_implicit"
    one_job = {p.name: (p / "hyps.jsonl").read_bytes() for p in decode.parent.glob("decode_*")}
    timing = json.loads((decode / "timing.json").read_text())
    out = run(corpus, tmp / "one", "--nproc", "2", "--force", "true", "--stage", "9", "--stop_stage", "9", *args[4:])
    logs = sorted(p.name for p in (exp / "log").glob("9.decode.c2ser*.log"))
    assert logs == ["9.decode.c2ser.1.log", "9.decode.c2ser.2.log", "9.decode.c2ser.log"], logs
    two_jobs = {name: (decode.parent / name / "hyps.jsonl").read_bytes() for name in one_job}
    assert set(one_job) == {"decode_test_explicit", "decode_test_implicit"}
    assert two_jobs == one_job
    merged = json.loads((decode / "timing.json").read_text())
    assert merged["jobs"] == 2 and merged["n"] == timing["n"] == 20 and not list(decode.glob("split*"))
    assert "merged the parts of 2 jobs" in out.stdout + out.stderr
