"""A data stage's ``--nj`` independent jobs: processes on this machine, or job steps on the cluster.

``map_jobs(fn, jobs, nj)`` is ``[fn(j) for j in jobs]``, in order, whatever ``nj`` and wherever it runs.
Locally it is a process pool.  When run.sh sets ``EMOREASON_JOB_CMD`` (cmd.sh's ``data_job_cmd``: the
Slurm launcher), the jobs are cut into ``nj`` interleaved parts, each part is pickled next to the stage's
log (``EMOREASON_JOB_LOG``, on the recipe's shared file system) and run by its own launcher call,
``python -m local.utils.jobs IN OUT``, logged in ``<log>.<k>.log`` -- ESPnet's ``JOB=1:nj``.  The stage
itself (reading and writing its data dirs) stays where run.sh runs.  A part that fails fails the stage,
naming its log.
"""
from __future__ import annotations

import multiprocessing
import os
import pickle
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

JOB_CMD, JOB_LOG = "EMOREASON_JOB_CMD", "EMOREASON_JOB_LOG"


def map_jobs(fn: Callable[[Any], Any], jobs: Sequence, nj: int, *, initializer: Callable | None = None,
             initargs: tuple = (), chunksize: int = 1, spawn: bool = False) -> list:
    """``fn`` of every job, in order, over ``nj`` workers; ``initializer(*initargs)`` first in each worker
    (e.g. to load a model once).  ``fn`` and ``initializer`` must be module-level functions.  ``spawn``:
    start local workers fresh rather than forked (a parent holding torch state)."""
    jobs = list(jobs)
    if nj <= 1 or len(jobs) <= 1:
        if initializer is not None:
            initializer(*initargs)
        return [fn(j) for j in jobs]
    nj = min(nj, len(jobs))
    if os.environ.get(JOB_CMD):
        return _launched(fn, jobs, nj, initializer, initargs)
    context = multiprocessing.get_context("spawn" if spawn else None)
    with ProcessPoolExecutor(nj, mp_context=context, initializer=initializer, initargs=initargs) as pool:
        return list(pool.map(fn, jobs, chunksize=chunksize))


def _launched(fn, jobs: list, nj: int, initializer, initargs) -> list:
    log = Path(os.environ.get(JOB_LOG) or "exp/log/jobs.log")
    work = log.with_name(f".{log.stem}.jobs")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    procs = []
    for k in range(1, nj + 1):
        part = jobs[k - 1::nj]
        with open(work / f"{k}.in", "wb") as f:
            pickle.dump((fn, initializer, initargs, part), f)
        cmd = [*shlex.split(os.environ[JOB_CMD]), str(log.with_name(f"{log.stem}.{k}.log")),
               sys.executable, "-m", "local.utils.jobs", str(work / f"{k}.in"), str(work / f"{k}.out")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
    failed = [str(log.with_name(f"{log.stem}.{k}.log")) for k, p in enumerate(procs, 1) if p.wait() != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} of {nj} jobs failed; see {', '.join(failed)}")
    results: list = [None] * len(jobs)
    for k in range(1, nj + 1):
        with open(work / f"{k}.out", "rb") as f:
            results[k - 1::nj] = pickle.load(f)
    shutil.rmtree(work)
    return results


def main(argv: list[str]) -> None:
    """One part: ``python -m local.utils.jobs IN OUT`` (what :func:`map_jobs` launches)."""
    src, dst = map(Path, argv)
    with open(src, "rb") as f:
        fn, initializer, initargs, part = pickle.load(f)
    if initializer is not None:
        initializer(*initargs)
    results = [fn(j) for j in part]
    tmp = dst.with_name(f".{dst.name}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(results, f)
    tmp.replace(dst)  # whole or absent: a killed job leaves no result to be read as one
    print(f"{len(part)} jobs done -> {dst}")


if __name__ == "__main__":
    main(sys.argv[1:])
