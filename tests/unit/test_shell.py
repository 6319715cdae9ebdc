"""The shell layer: Kaldi option parsing, the launcher, and run.sh's refusals."""
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bash(script: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script, "test.sh", *args], cwd=cwd, capture_output=True, text=True)


PARSE = """
foo_bar=1
flag=false
. tools/parse_options.sh
echo "foo_bar=${foo_bar} flag=${flag} rest=$*"
"""


def test_parse_options_sets_declared_variables():
    out = bash(PARSE, "--foo-bar", "x y", "--flag", "true", "pos1", "pos2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "foo_bar=x y flag=true rest=pos1 pos2"
    assert bash(PARSE, "--foo_bar", "2").stdout.strip() == "foo_bar=2 flag=false rest="


def test_parse_options_fails_loudly():
    unknown = bash(PARSE, "--fooo", "1")
    assert unknown.returncode == 1 and "invalid option --fooo" in unknown.stderr
    boolean = bash(PARSE, "--flag", "yes")
    assert boolean.returncode == 1 and "option --flag is boolean" in boolean.stderr
    missing = bash(PARSE, "--foo-bar")
    assert missing.returncode == 1 and "needs a value" in missing.stderr
    equals = bash(PARSE, "--foo-bar=3")
    assert equals.returncode == 1 and "not '--name=value'" in equals.stderr


def test_launcher_logs_and_keeps_exit_status(tmp_path):
    log = tmp_path / "log" / "x.log"
    ok = subprocess.run(["tools/launch.sh", str(log), "bash", "-c", "echo hello"], cwd=ROOT,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout == "hello\n"
    assert log.read_text().splitlines()[1] == "hello"
    bad = subprocess.run(["tools/launch.sh", str(log), "bash", "-c", "echo oops; exit 3"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 3 and f"see {log}" in bad.stderr


def fake_commands(tmp_path: Path, *names: str) -> Path:
    """A bin dir whose ``names`` print their command line instead of running."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    for name in names:
        (fake / name).write_text(f'#!/bin/sh\necho "{name} $*"\n')
        (fake / name).chmod(0o755)
    return fake


def test_launcher_slurm_backend_asks_srun_for_the_resources_of_its_kind(tmp_path):
    fake = fake_commands(tmp_path, "srun")
    conf = tmp_path / "slurm.conf"
    conf.write_text("# comment\ncpu: --mem 8G --time 1:00:00\ngpu: --partition gpu --mem 64G\n")
    out = subprocess.run(["bash", "-c", f"PATH={fake}:$PATH tools/launch.sh --backend slurm --config {conf} "
                          f"--kind gpu --gpu 2 --cpus 4 --num_nodes 3 {tmp_path}/s.log python train.py"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("srun --job-name s --nodes 3 --ntasks-per-node 1 --cpus-per-task 4 --gres gpu:2 "
                                  "--partition gpu --mem 64G python train.py")
    out = subprocess.run(["bash", "-c", f"PATH={fake}:$PATH tools/launch.sh --backend slurm --config {conf} "
                          f"{tmp_path}/d.log python prep.py"], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == ("srun --job-name d --nodes 1 --ntasks-per-node 1 --cpus-per-task 1 "
                                  "--mem 8G --time 1:00:00 python prep.py")  # no GPU asked for


def test_launcher_gives_each_local_job_its_own_gpus(tmp_path):
    def visible(*args: str, env: str | None = None) -> subprocess.CompletedProcess:
        prefix = f"CUDA_VISIBLE_DEVICES={env} " if env is not None else "unset CUDA_VISIBLE_DEVICES; "
        return subprocess.run(["bash", "-c", f"{prefix}tools/launch.sh {' '.join(args)} {tmp_path}/g.log "
                               "bash -c 'echo ${CUDA_VISIBLE_DEVICES:-none}'"], cwd=ROOT, capture_output=True,
                              text=True)
    assert visible().stdout.strip() == "none"
    assert visible("--gpu", "1", "--job", "3").stdout.strip() == "2"
    assert visible("--gpu", "2", "--job", "2", env="4,5,6,7").stdout.strip() == "6,7"
    too_few = visible("--gpu", "1", "--job", "3", env="0,1")
    assert too_few.returncode == 1 and "job 3 needs GPUs 3-3, and 2 are visible" in too_few.stderr


def test_torchrun_wrapper_standalone_on_one_node_and_c10d_at_the_first_node_on_several(tmp_path):
    fake = fake_commands(tmp_path, "python", "scontrol")
    one = subprocess.run(["bash", "-c", f"PATH={fake}:$PATH tools/torchrun.sh 2 1 -m local.bin.sft a=1"], cwd=ROOT,
                         capture_output=True, text=True)
    assert one.stdout.strip() == ("python -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node 2 "
                                  "-m local.bin.sft a=1")
    (fake / "scontrol").write_text('#!/bin/sh\ncase "$2" in hostnames) printf \'node7\\nnode8\\n\' ;;\n'
                                   '  node) echo "NodeName=$3 Arch=x86_64 NodeAddr=10.0.0.7 NodeHostName=$3" ;; esac\n')
    two = subprocess.run(["bash", "-c", f"PATH={fake}:$PATH SLURM_JOB_NODELIST='node[7-8]' SLURM_JOB_ID=42 "
                          "tools/torchrun.sh 4 2 -m local.bin.sft"], cwd=ROOT, capture_output=True, text=True)
    assert two.stdout.strip() == ("python -m torch.distributed.run --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d "
                                  "--rdzv_endpoint 10.0.0.7:29500 --rdzv_id 42 -m local.bin.sft")
    alone = subprocess.run(["bash", "-c", "unset SLURM_JOB_NODELIST; tools/torchrun.sh 4 2 -m x"], cwd=ROOT,
                           capture_output=True, text=True)
    assert alone.returncode == 1 and "need a Slurm allocation" in alone.stderr


def test_run_sh_refuses_bad_parallel_options_before_running_anything(tmp_path):
    for args, said in ((["--nproc", "0"], "--nproc must be a whole number of processes >= 1, not '0'"),
                       (["--ngpu", "2", "--nproc", "3"], "--nproc 3 with --ngpu 2: one process per GPU"),
                       (["--num_nodes", "2"], "--num_nodes 2 needs a scheduler"),
                       (["--num_nodes", "x"], "--num_nodes must be a whole number >= 1, not 'x'")):
        out = subprocess.run(["egs/mini_lime/run.sh", *args, "--exp_root", str(tmp_path / "exp")], cwd=ROOT,
                             capture_output=True, text=True)
        assert out.returncode == 1 and said in out.stderr, (args, out.stderr)
        assert not (tmp_path / "exp").exists()


def test_run_sh_refuses_unbuilt_systems_up_front(tmp_path):
    out = subprocess.run(["egs/mini_lime/run.sh", "--system", "nosuch", "--stage", "3", "--stop_stage", "8",
                          "--exp_root", str(tmp_path / "exp")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1
    assert "--system nosuch is not built yet" in out.stdout and "conf/experiment/nosuch.yaml" in out.stdout
    assert not (tmp_path / "exp").exists()  # refused before doing anything


def test_run_sh_rejects_unknown_options_and_corpora():
    out = subprocess.run(["./run.sh", "--stop-stage", "4", "--bogus", "1"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and "invalid option --bogus" in out.stderr
    out = subprocess.run(["./run.sh", "--corpus", "nope"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and "no recipe egs/nope/run.sh" in out.stderr


def test_run_sh_help_lists_all_stages_and_every_option_with_its_default_on_stdout():
    out = subprocess.run(["./run.sh", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr == ""
    for n, name in enumerate("prepare format attributes targets shards pretrain sft distill rl decode score".split()):
        assert f"  {n:<3} {name}" in out.stdout
    declared = re.findall(r"^([a-z0-9_]+)=(\S*)", (ROOT / "run.sh").read_text().split("# Options", 1)[1]
                          .split("# The help lists", 1)[0], re.MULTILINE)
    assert len(declared) > 30
    for name, default in declared:
        shown = {"corpus": "mini_lime"}.get(name, default.strip('"'))
        assert re.search(rf"^  --{name} +\[{re.escape(shown)}\] ", out.stdout, re.MULTILINE), name


@pytest.mark.parametrize("args, message", [
    (["--stage", "abc"], "--stage must be a stage number 0-10, not 'abc'"),
    (["--stage", "11"], "--stage must be a stage number 0-10, not '11'"),
    (["--stage", "5", "--stop_stage", "2"], "--stage 5 --stop_stage 2 is an empty range of stages"),
    (["--nj", "0"], "--nj must be a whole number of processes >= 1, not '0'"),
    (["--ngpu", "one"], "--ngpu must be a whole number of GPUs (0 = CPU), not 'one'"),
    (["--skip_stages", "3,5"], "--skip_stages must list stage numbers 0-10, not '3,5'"),
    (["--force", "yes"], "option --force is boolean; give true or false, not 'yes'"),
])
def test_run_sh_refuses_bad_values_in_one_line_before_running_anything(args, message, tmp_path):
    out = subprocess.run(["./run.sh", *args, "--exp_root", str(tmp_path / "exp"), "--python", "false"], cwd=ROOT,
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 1 and out.stderr == f"run.sh: {message}\n" and out.stdout == ""
    assert not (tmp_path / "exp").exists()  # nothing ran: not even the experiment's history was written


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for the stages: logs "start|end <module> <exp_name>" and fails where told; answers run.sh's
# `-m local.bin.stamp STAGE ARGS` with "up to date" (0) once that stage of that experiment has run.
name=main
for a in "$@"; do case "$a" in baseline=*) name=${a#baseline=} ;; esac; done
if [ "$2" = local.bin.stamp ]; then
  [ -e "${CALLS}.done/$3.${name}" ]; exit
fi
echo "start $2 ${name}" >> "$CALLS"
sleep 0.3
[ "${name}" = main ] || sleep "${BASELINE_SLEEP:-0}"
echo "end $2 ${name}" >> "$CALLS"
[ "${name}" != "${FAIL:-}" ] || exit 3
mkdir -p "${CALLS}.done" && touch "${CALLS}.done/${2#local.bin.}.${name}"
"""


def model_stages_command(tmp_path: Path, *options: str, **env: str) -> dict:
    """run.sh --stage 6 with a fake interpreter that logs each stage to tmp_path/calls."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    (tmp_path / "calls").unlink(missing_ok=True)
    return dict(args=[str(ROOT / "run.sh"), "--stage", "6", "--python", str(fake), "--nj", "2",
                      "--exp_root", str(tmp_path / "exp"), *options], cwd=tmp_path, text=True,
                env={**os.environ, "EMOREASON_RECIPE": "mini_lime", "CALLS": str(tmp_path / "calls"), **env})


def run_model_stages(tmp_path: Path, *options: str, fail: str = "") -> tuple[subprocess.CompletedProcess, list[str]]:
    out = subprocess.run(capture_output=True, **model_stages_command(tmp_path, *options, FAIL=fail))
    calls = tmp_path / "calls"
    return out, calls.read_text().splitlines() if calls.exists() else []


def most_at_once(calls: list[str]) -> int:
    running, most = set(), 0
    for c in calls:
        event, _, name = c.split()
        (running.add if event == "start" else running.discard)(name)
        most = max(most, len(running))
    return most


def test_run_sh_runs_two_experiments_at_a_time_and_waits_for_the_system_where_a_baseline_needs_it(tmp_path):
    out, calls = run_model_stages(tmp_path, "--system", "ambiguity")
    assert out.returncode == 0, out.stdout + out.stderr
    ends = [c.split()[2] for c in calls if c.startswith("end local.bin.decode")]
    assert sorted(ends) == sorted(["main", "sft_only", "ce_only", "dpo", "grpo"])
    main_done = calls.index("end local.bin.decode main")
    assert "start local.bin.sft ce_only" in calls[:main_done]  # trains its own model: beside the system
    for name in ("sft_only", "dpo", "grpo"):  # start from the system's model: after it
        assert calls.index(f"start local.bin.sft {name}") > main_done
    assert calls[-1] == "end local.bin.score main" and calls[-2].startswith("start local.bin.score")
    assert most_at_once(calls[:-2]) == 2  # --nj 2: two at once, never more

    again, calls = run_model_stages(tmp_path, "--system", "ambiguity")
    assert again.returncode == 0 and calls == []  # every stage done already
    assert again.stdout.count("up to date, skipped") == 5 * 4 + 1


def test_run_sh_fails_when_a_baseline_fails_and_keeps_the_others(tmp_path):
    out, calls = run_model_stages(tmp_path, fail="no_whisper")  # c2ser: every baseline beside the system
    assert out.returncode == 1
    assert "1 experiment(s) failed" in out.stdout
    finished = {c.split()[2] for c in calls if c.startswith("end local.bin.decode")}
    assert finished == {"main", "text_only", "no_e2v", "no_cot"}
    assert not any("local.bin.score" in c for c in calls)  # no table from a partial run


def test_interrupting_run_sh_stops_the_baselines_running_in_the_background(tmp_path):
    proc = subprocess.Popen(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            **model_stages_command(tmp_path, BASELINE_SLEEP="60"))
    calls = tmp_path / "calls"
    deadline = time.time() + 60
    while time.time() < deadline and (not calls.exists() or calls.read_text().count("start local.bin.sft") < 3):
        time.sleep(0.05)
    assert calls.read_text().count("start local.bin.sft") == 3  # the system's, then two baselines at once
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 130
    time.sleep(0.5)
    fake = str(tmp_path / "python")
    survivors = [p for p in Path("/proc").iterdir() if p.name.isdigit() and fake in read_cmdline(p)]
    assert survivors == []


def read_cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # gone meanwhile
        return ""


def test_install_refuses_a_disk_too_small_for_the_stack_before_touching_anything(tmp_path):
    """A first install on a nearly full disk says how much it needs instead of dying half-way in pip."""
    (tmp_path / "tools").mkdir()
    for name in ("tools/install.sh", "setup.py"):
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "df").write_text("#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
                             "echo '/dev/x 100000000 99000000 3145728 99% /'\n")  # 3 GB free
    (fake / "df").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", "tools/install.sh"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 1
    assert "3 GB free" in out.stderr and "needs about 10 GB" in out.stderr
    assert not (tmp_path / "tools" / "venv").exists()


def test_run_sh_refuses_one_model_dir_for_every_experiment_and_says_how_to_decode_it_alone(tmp_path):
    how = './run.sh --stage 9 --baselines "" --decode_args "decode.model_dir=DIR exp_name=NAME" --score_args "exp_name=NAME"'
    for args, message in [([], "would decode that one model for every experiment (c2ser text_only no_whisper no_e2v "
                                "no_cot)"),
                          (["--baselines", ""], "needs exp_name=NAME beside it, or its decodes replace c2ser's own")]:
        out = subprocess.run(["./run.sh", *args, "--decode_args", "decode.model_dir=/x", "--exp_root",
                              str(tmp_path / "exp")], cwd=ROOT, capture_output=True, text=True, timeout=10)
        assert out.returncode == 1 and message in out.stderr and how in out.stderr
        assert not (tmp_path / "exp").exists()


def test_run_sh_trains_the_baselines_a_system_yaml_lists(tmp_path):
    """The system's experiment yaml is its registry entry: run.sh trains the baselines its score.baselines name."""
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "toy.yaml").write_text(
        "# @package _global_\nscore:\n  baselines:\n    a: {baseline: ce_only, mode: implicit}\n"
        "    b: {baseline: no_cot, mode: explicit}\n    c: {baseline: ce_only, mode: explicit}\n")
    out, calls = run_model_stages(tmp_path, "--system", "toy")
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(c.split()[2] for c in calls if c.startswith("end local.bin.sft")) == ["ce_only", "main", "no_cot"]
