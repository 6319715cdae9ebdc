"""``cmd_backend=slurm``: every stage submitted to a real Slurm (tests/helpers/slurm.py: two nodes on this
machine) makes what the local backend makes, a 2-process training stage goes through srun + torchrun,
decoding runs as one job per part, each job asks for its resources, a training stage spans two nodes through
torchrun's c10d rendezvous, and a failed job fails its stage naming its log."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import slurm
from helpers.smoke_recipe import NO_DROPOUT, SFT, build, run, train_losses

ARGS = ["--nj", "2", "--nproc", "2", "--sft_args", SFT, "--distill_args", NO_DROPOUT, "--decode_args", NO_DROPOUT]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with slurm.start(tmp_path_factory.mktemp("slurm")) as env:
        yield env


def made(root: Path) -> dict[str, bytes]:
    """Every file the run made that says what it made (data dirs, shard manifests, hypotheses, tables), with
    the run's own root written ROOT."""
    files = {}
    for pattern in ("data/*/*", "dump/*/shards/manifest.json", "exp/c2ser/decode_*/hyps.jsonl"):
        for p in sorted(root.glob(pattern)):
            if p.is_file() and p.name != "provenance.json":
                files[str(p.relative_to(root))] = p.read_bytes()
    tables = json.loads((root / "exp/c2ser/results.json").read_text())["tables"]
    for rows in tables.values():  # the time it took is the one thing that may differ
        for row in rows.values():
            row.pop("sec_per_utt", None)
    files["tables"] = json.dumps(tables).encode()
    return {k: v.replace(str(root).encode(), b"ROOT") for k, v in files.items()}


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """Stages 0-10 of the smoke recipe on the local backend and through Slurm."""
    tmp = tmp_path_factory.mktemp("runs")
    corpus = build(tmp / "db")
    run(corpus, tmp / "local", *ARGS)
    on_slurm = run(corpus, tmp / "slurm", *ARGS, env={**cluster, "cmd_backend": "slurm"})
    return corpus, tmp, on_slurm


def test_the_stages_through_slurm_make_what_the_local_backend_makes(cluster, runs):
    _, tmp_path, on_slurm = runs
    local, submitted = made(tmp_path / "local"), made(tmp_path / "slurm")
    assert len(local) > 40 and local.keys() == submitted.keys()
    assert [k for k in local if local[k] != submitted[k]] == []
    sft = "exp/c2ser/sft"
    want, got = train_losses(tmp_path / "local" / sft), train_losses(tmp_path / "slurm" / sft)
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, 9))
    assert [x for _, x in got] == pytest.approx([x for _, x in want], rel=1e-6)

    jobs = {j["JobName"]: j for j in slurm.jobs(cluster)}
    # a data stage runs where run.sh does and sends its --nj jobs to the cluster, a job each
    names = ["1.format.data.1", "1.format.data.2", "2.attributes.data.1", "2.attributes.data.2",
             "5.pretrain.e2vs", "6.sft.c2ser", "7.distill.c2ser", "9.decode.c2ser.1", "9.decode.c2ser.2",
             "9.decode.c2ser"]
    assert all(jobs[n]["JobState"] == "COMPLETED" for n in names), {n: jobs.get(n, {}).get("JobState") for n in names}
    assert jobs["6.sft.c2ser"]["NumCPUs"] == "2" and jobs["9.decode.c2ser.1"]["NumCPUs"] == "1"
    assert "1.format.data" not in jobs  # the stage itself: not a job
    part = (tmp_path / "slurm" / "exp" / "log" / "1.format.data.2.log").read_text()
    assert " srun --job-name 1.format.data.2 " in part.splitlines()[0] and "jobs done" in part
    log = (tmp_path / "slurm" / "exp" / "log" / "6.sft.c2ser.log").read_text()
    first = log.splitlines()[0]
    assert " srun --job-name 6.sft.c2ser " in first and "tools/torchrun.sh 2 1 -m local.bin.sft" in first
    assert "world size 2" in log and "--mem 16G" in first  # conf/slurm.conf's cpu line
    assert "Successfully finished" in on_slurm.stdout


def test_a_training_stage_on_two_nodes_through_srun_and_torchrun_rendezvous(cluster, runs, tmp_path):
    corpus, tmp, _ = runs
    shutil.copytree(tmp / "slurm", tmp_path / "multi")
    env = {**cluster, "cmd_backend": "slurm", "EMOREASON_RDZV_PORT": str(slurm.free_port())}
    run(corpus, tmp_path / "multi", "--num_nodes", "2", "--stage", "6", "--stop_stage", "6", "--force", "true",
        "--sft_args", SFT, env=env)
    job = [j for j in slurm.jobs(cluster) if j["JobName"] == "6.sft.c2ser"][-1]
    assert (job["JobState"], job["NumNodes"], job["NodeList"]) == ("COMPLETED", "2", "n[1-2]")
    log = (tmp_path / "multi" / "exp" / "log" / "6.sft.c2ser.log").read_text()
    first = log.splitlines()[0]
    assert "--nodes 2 --ntasks-per-node 1" in first and "tools/torchrun.sh 1 2 -m local.bin.sft" in first
    assert "world size 2" in log
    sft = "exp/c2ser/sft"  # one process on each node: the batches and losses of one process
    want, got = train_losses(tmp / "local" / sft), train_losses(tmp_path / "multi" / sft)
    assert [x for _, x in got] == pytest.approx([x for _, x in want], rel=1e-6)


def test_a_failed_slurm_job_fails_its_stage_and_names_its_log(cluster, tmp_path):
    corpus = build(tmp_path / "db")
    out = run(corpus, tmp_path / "r", "--stop_stage", "0", "--prepare_args", "corpus.no_such_key=1",
              env={**cluster, "cmd_backend": "slurm"}, check=False)
    log = tmp_path / "r" / "exp" / "log" / "0.prepare.data.log"
    assert out.returncode != 0 and f"see {log}" in out.stderr
    text = log.read_text()
    assert text.splitlines()[0].split(" ", 2)[2].startswith("srun ") and "corpus.no_such_key" in text
    failed = [j for j in slurm.jobs(cluster) if j["JobName"] == "0.prepare.data" and j["JobState"] == "FAILED"]
    assert failed, slurm.jobs(cluster)
