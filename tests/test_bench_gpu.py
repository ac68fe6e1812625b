"""bench/bench_gpu.py keeps working without a GPU: the --tiny smoke run, the no-CUDA message,
and the real-size path (its 2B config on the meta device, its bf16 loop on a shrunk copy)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def bench_gpu(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_gpu
    return bench_gpu


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / "bench_gpu.py"), *args],
                          capture_output=True, text=True, timeout=300)


def test_tiny_smoke_run_prints_one_figure_block() -> None:
    p = _run("--tiny")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert "1 warm-up + 2 timed" in p.stdout
    median = re.search(r"median s/step\s+([0-9.]+) s", p.stdout)
    assert median and float(median.group(1)) > 0, p.stdout
    assert "peak memory" in p.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_it_says_so_in_one_line() -> None:
    p = _run()
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().count("\n") == 0 and "--tiny" in p.stderr, p.stderr


def test_real_config_is_the_2b_transformer(bench_gpu) -> None:
    components = bench_gpu.build_components(False, torch.device("meta"), torch.bfloat16)
    params = list(components.transformer.parameters())
    assert {p.dtype for p in params} == {torch.bfloat16}
    assert 1.8e9 < sum(p.numel() for p in params) < 2.1e9
    assert torch.get_default_dtype() == torch.float32  # restored after the build
    assert bench_gpu.latent_shape(components, "768x512x49") == (128, 7, 16, 24)


def test_real_path_trains_in_bf16_on_a_shrunk_config(bench_gpu,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    small = dict(bench_gpu.REAL_TRANSFORMER, in_channels=16, out_channels=16, num_layers=1,
                 num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
                 caption_channels=64)
    monkeypatch.setattr(bench_gpu, "REAL_TRANSFORMER", small)
    monkeypatch.setattr(bench_gpu, "REAL_TEXT_TOKENS", 16)
    args = bench_gpu.parse_args(["--device", "cpu", "--resolution", "64x64x9", "--rank", "4",
                                 "--warmup", "1", "--steps", "2"])
    figures = bench_gpu.bench(args)
    assert figures.precision == "bf16" and figures.latent_shape == (16, 2, 2, 2)
    assert len(figures.step_seconds) == 2 and figures.median > 0
    assert figures.trainable > 0 and figures.peak_bytes is None
    assert "median s/step" in bench_gpu.render(figures)


def test_13b_config_is_the_13b_transformer(bench_gpu) -> None:
    components = bench_gpu.build_components(False, torch.device("meta"), torch.bfloat16, "13b")
    assert 12.9e9 < sum(p.numel() for p in components.transformer.parameters()) < 13.2e9


def test_bare_loop_baseline_trains_the_same_lora(bench_gpu) -> None:
    args = bench_gpu.parse_args(["--tiny", "--loop", "bare", "--warmup", "1", "--steps", "2"])
    figures = bench_gpu.bench(args)
    assert figures.loop == "bare" and len(figures.step_seconds) == 2 and figures.median > 0
    assert figures.trainable > 0
    assert "bare loop" in bench_gpu.render(figures)


def test_all_runs_every_variant_and_prints_a_table(bench_gpu, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """--tiny --all, cut to two of its variants (each is a fresh process of ~10 s): the 13B
    maps to the tiny model, and its int8 needs torchao (an extra): without it that variant
    fails with the one line naming it, and the other still reports in the table."""
    assert ("13b", "int8", "ltxq") in bench_gpu.VARIANTS
    monkeypatch.setattr(bench_gpu, "VARIANTS", (("2b", "none", "bare"), ("13b", "int8", "bare")))
    code = bench_gpu.run_all(bench_gpu.parse_args(["--tiny", "--all", "--steps", "1"]))
    out = capsys.readouterr().out
    assert "| model | weights | loop | median s/step | peak GiB |" in out, out
    rows = [line for line in out.splitlines() if line.startswith("| tiny-random")]
    try:
        import torchao  # noqa: F401
    except ImportError:
        assert code == 1 and len(rows) == 1 and "| none | bare |" in rows[0]
        assert "pip install 'ltxq[quantization]'" in out
    else:
        assert code == 0 and len(rows) == 2
