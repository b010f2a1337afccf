"""bench/bench_gpu.py: its smallest mode runs every part end to end; work that cannot fit is refused first."""

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "bench" / "bench_gpu.py"


def bench(*arguments: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_tiny_mode_measures_every_part_and_writes_json_and_markdown(tmp_path, shared_data):
    # A generous budget: on a busy machine the tiny parts run slower than expected and would be skipped.
    result = bench("--size=tiny", "--budget_s=600", f"--out={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench_gpu.json").read_text())
    parts = report["parts"]
    assert parts["a"]["float32_texts_per_s"] > 0 and parts["a"]["tokens_per_text"] > 2
    assert parts["b"]["tokens_per_s"] > 0 and parts["b"]["texts_trained"] > 0
    assert "skipped" not in parts["c"], parts["c"]
    moderate = parts["c"]["splits"]["moderate"]
    for name in ("pretrained:semcal", "pretrained:sum_labmom", "pretrained_paper:semcal", "scratch:sum_labmom"):
        assert name in moderate, sorted(moderate)
    assert all(model_losses for model_losses in parts["c"]["eval_loss"].values())
    for captioner in ("florence2", "qwen2_audio"):
        assert parts["d"][captioner]["items_per_s"] > 0 and parts["d"][captioner]["dtype"] == "float32"
    markdown = (tmp_path / "bench_gpu.md").read_text()
    assert "| moderate | pretrained_paper:semcal |" in markdown and "(a) scoring" in markdown


def test_work_that_cannot_fit_is_refused_before_any_work(tmp_path):
    result = bench("--size=tiny", "--budget_s=5", f"--out={tmp_path / 'x'}", timeout=120)
    assert (
        result.returncode != 0 and "refused before any work" in result.stderr and "over the 5s budget" in result.stderr
    )
    assert not (tmp_path / "x").exists()
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: full size is not refused")
    result = bench("--size=full", f"--out={tmp_path / 'y'}", timeout=120)
    assert result.returncode != 0 and "needs a CUDA GPU" in result.stderr and not (tmp_path / "y").exists()
