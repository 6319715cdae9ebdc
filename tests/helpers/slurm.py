"""A real Slurm for the tests: munged, slurmctld and one slurmd per node, all on this machine, in a temp dir.

Debian's ``slurm-wlm`` and ``munge`` (``tools/install.sh --with-slurm``; tools/test.sh asks for them).
The daemons run as root with their state, spool, logs and ports of their own, so a developer's Slurm is
not touched; ``SLURM_CONF`` points the clients (srun, scontrol) at this one.  Its nodes n1, n2, ... are
slurmd daemons of this host (``slurmd -N``), each with all its CPUs: a multi-node job is real Slurm
multi-node (an allocation over several nodes, one task per node, SLURM_JOB_NODELIST), on one machine.
Where Slurm cannot run here (not installed, not root) :func:`start` skips the test and says why.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

DAEMONS = ("slurmctld", "slurmd", "munged", "srun", "scontrol", "sinfo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munge_works() -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        return cred.returncode == 0 and subprocess.run(["unmunge"], input=cred.stdout, capture_output=True,
                                                       timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _start_munge() -> bool:
    """munged, started here unless one already answers; True when this call started it."""
    if _munge_works():
        return False
    run_dir = Path("/run/munge")  # munged refuses to start without its socket dir, owned by its user
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    run_dir.chmod(0o755)
    subprocess.run(["runuser", "-u", "munge", "--", shutil.which("munged") or "/usr/sbin/munged"], check=True,
                   capture_output=True, timeout=30)
    for _ in range(50):
        if _munge_works():
            return True
        time.sleep(0.1)
    raise RuntimeError("munged started but does not answer (munge -n | unmunge)")


def _conf(root: Path, host: str, nodes: int) -> Path:
    cpus = os.cpu_count() or 1
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 512
    names = [f"n{k}" for k in range(1, nodes + 1)]
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=emoreason_test",
        f"SlurmctldHost={host}(127.0.0.1)",
        "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge",
        f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}/%n",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.%n.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}", f"SlurmdLogFile={root / 'slurmd.%n.log'}",
        f"SlurmctldPort={free_port()}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",  # jobs share the node by CPU
        "ReturnToService=2", "SchedulerType=sched/backfill", "MinJobAge=3600",  # finished jobs stay visible
        "JobCompType=jobcomp/none", "AccountingStorageType=accounting_storage/none",
        *(f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} CPUs={cpus} "
          f"RealMemory={mem_mb} State=UNKNOWN" for n in names),
        f"PartitionName=main Nodes={','.join(names)} Default=YES MaxTime=INFINITE State=UP", ""]))
    return conf


def _stop(pid_file: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)


@contextlib.contextmanager
def start(root: Path, nodes: int = 2) -> Iterator[dict[str, str]]:
    """Run a Slurm of ``nodes`` nodes under ``root``; yields the environment its clients need (SLURM_CONF)."""
    missing = [d for d in DAEMONS if not shutil.which(d)]
    if missing:
        pytest.skip(f"Slurm is not installed here (no {', '.join(missing)}): tools/install.sh --with-slurm "
                    "installs it with apt-get")
    if os.geteuid() != 0:
        pytest.skip("a test Slurm runs its daemons as root, and these tests do not run as root")
    host = socket.gethostname().split(".")[0]
    names = [f"n{k}" for k in range(1, nodes + 1)]
    for sub in ("state", *(f"spool/{n}" for n in names)):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = _conf(root, host, nodes)
    env = dict(os.environ, SLURM_CONF=str(conf))
    started_munge = _start_munge()
    try:
        subprocess.run(["slurmctld", "-f", str(conf)], env=env, check=True, capture_output=True, timeout=60)
        for name in names:
            subprocess.run(["slurmd", "-f", str(conf), "-N", name], env=env, check=True, capture_output=True,
                           timeout=60)
        for _ in range(300):
            state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True)
            if state.stdout.split() == ["idle"] * nodes:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"the test Slurm did not come up: sinfo says {state.stdout.strip()!r} "
                               f"{state.stderr.strip()!r}; see {root}/slurmctld.log and slurmd.*.log")
        yield env
    finally:
        for name in names:
            _stop(root / f"slurmd.{name}.pid")
        _stop(root / "slurmctld.pid")
        if started_munge:
            subprocess.run(["pkill", "-x", "munged"], capture_output=True)


def jobs(env: dict[str, str]) -> list[dict[str, str]]:
    """The jobs the test Slurm ran or runs, each as scontrol prints it (JobName, JobState, NumCPUs, ...)."""
    out = subprocess.run(["scontrol", "show", "jobs", "-o"], env=env, capture_output=True, text=True, check=True)
    found = []
    for line in out.stdout.splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if fields:
            found.append(fields)
    return found
