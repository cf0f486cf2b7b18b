"""benchmarks/bench_gpu.py runs its CPU mode (the same code paths as on a GPU, tiny sizes), so it cannot rot."""

import importlib.util

import torch

from tests.conftest import REPO


def test_bench_gpu_cpu_mode_measures_every_section(capsys):
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "benchmarks" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        results = bench.main(["--device", "cpu", "--tiny"])
    finally:
        torch.set_num_threads(threads)
    (model,) = results["models"].values()
    assert model["bare_img_s"] > 0 and model["engine_img_s"] > 0 and model["ratio"] > 0
    assert results["packed"]["loop"] > 0 and results["packed"]["packed"] > 0
    assert results["syncs_per_step"] is None  # counted on CUDA only
    printed = capsys.readouterr().out
    for section in ("(a)", "(b)", "(c)", "(d)"):
        assert section in printed
