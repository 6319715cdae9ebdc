"""tests/bench/bench_gpu.py, the GPU checks, run on the CPU at the tiny size: the command a GPU session runs
works end to end, and batched KV-cached generation writes what one generate call per utterance writes."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_gpu.py"


def test_the_gpu_checks_run_on_the_cpu_at_tiny_size(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--device", "cpu", "--size", "tiny", "--steps", "1", "--decode_n", "5", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "bench_gpu.json").read_text())
    step = result["sft_step"]
    assert step["finite"] and step["samples_per_s"] > 0 and step["peak_gb"] is None  # no CUDA peak on a CPU
    assert "sft_step_paper" not in result  # paper size only where it can run (auto: CUDA)
    for mode, tokens in (("explicit", 96), ("implicit", 16)):
        r = result[f"decode_{mode}"]
        assert r["new_tokens"] == tokens and r["same_output"] == r["n"] == 5  # left padding changes nothing
        assert r["speedup"] == r["per_utterance"]["seconds"] / r["batched"]["seconds"]
    assert "not measured (CPU)" in (tmp_path / "bench_gpu.md").read_text()
