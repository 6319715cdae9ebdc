"""local/utils/jobs.py: a data stage's --nj jobs, as processes here or each through a launcher (Slurm's in
run.sh; here tools/launch.sh's local backend, the same path without a cluster)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from local.utils.jobs import JOB_CMD, JOB_LOG, map_jobs

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("nj", [1, 2, 3])
def test_results_come_in_job_order_whatever_nj(nj):
    assert map_jobs(math.sqrt, [1, 4, 9, 16, 25, 36, 49], nj) == [1, 2, 3, 4, 5, 6, 7]


def test_launched_jobs_run_each_part_through_the_launcher_with_a_log_of_its_own(tmp_path, monkeypatch):
    log = tmp_path / "log" / "1.format.data.log"
    monkeypatch.setenv(JOB_CMD, f"{ROOT}/tools/launch.sh --backend local")
    monkeypatch.setenv(JOB_LOG, str(log))
    monkeypatch.chdir(ROOT)  # the launched python finds the local package from the repository root
    assert map_jobs(math.sqrt, [1, 4, 9, 16, 25], 2) == [1, 2, 3, 4, 5]
    for k, n in ((1, 3), (2, 2)):  # interleaved parts: jobs 1, 3, 5 and 2, 4
        text = (tmp_path / "log" / f"1.format.data.{k}.log").read_text()
        assert "local.utils.jobs" in text.splitlines()[0] and f"{n} jobs done" in text
    assert not list((tmp_path / "log").glob(".*jobs"))  # the parts' files are removed
    with pytest.raises(RuntimeError, match=r"1 of 2 jobs failed; see .*1\.format\.data\.2\.log"):
        map_jobs(math.sqrt, [1, -4, 9], 2)  # math domain error in part 2
    assert "math domain error" in (tmp_path / "log" / "1.format.data.2.log").read_text()
