"""Several processes (torchrun, gloo on CPU): scoring and captioning give the one-process files byte
for byte, a killed rank resumes its share, DDP fine-tuning matches one process, `semcal run
--nproc_per_node=2` runs the whole pipeline."""

import os
import subprocess
import sys

import numpy as np
import pytest

from semcal.captioning.captioning import caption_audio, caption_images
from semcal.lm.scoring import SCORES_NAME, ScoreConfig, score_split
from semcal.store import files, runstate
from semcal.store.data import load_dataset_dict
from tests.conftest import REPO_ROOT
from tests.lm_fixtures import tiny_model_folder, write_demo_dataset
from tests.test_captioning import (  # noqa: F401 (fixtures)
    as_overrides,
    audio_config,
    audio_folder,
    image_config,
    image_folder,
    models,
    output_files,
)
from tests.test_lm import _scratch


def torchrun(nproc: int, *arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N -m semcal ARGUMENTS` (a free port each time)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command += ["-m", "semcal", *arguments]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600)


def overrides(config) -> list[str]:
    return [f"--{name}={'none' if value is None else value}" for name, value in vars(config).items()]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    data = write_demo_dataset(root / "data")
    model = tiny_model_folder(root / "model", load_dataset_dict(str(data))["general_train"]["text"])
    return {"root": root, "data": str(data), "model": str(model)}


def score_config(workspace, output_dir) -> ScoreConfig:
    return ScoreConfig(
        dataset_name=workspace["data"],
        split_name="general_train",
        model=workspace["model"],
        output_dir=str(output_dir),
        batch_size=4,
        chunk_size=8,
    )


def test_scoring_in_two_processes_writes_the_one_process_file_byte_for_byte(workspace, tmp_path):
    one = score_split(score_config(workspace, tmp_path / "one"))
    result = torchrun(2, "score", *overrides(score_config(workspace, tmp_path / "two")))
    assert result.returncode == 0, result.stderr[-3000:]
    two = tmp_path / "two" / SCORES_NAME
    assert two.read_bytes() == one.read_bytes()
    assert files.read_record(tmp_path / "two")["processes"] == 2
    assert "done" in result.stdout and result.stdout.count("score two: done") == 1  # one rank speaks


def test_a_killed_rank_resumes_its_share_and_the_file_is_the_same(workspace, tmp_path):
    one = score_split(score_config(workspace, tmp_path / "one"))
    arguments = overrides(score_config(workspace, tmp_path / "two"))
    killed = torchrun(2, "score", *arguments, env={runstate.KILL_ENV: "chunk:3@1"})
    assert killed.returncode != 0
    parts = tmp_path / ".two.partial" / f"{SCORES_NAME}.parts"
    assert len(list(parts.glob("part-rank1-*.csv"))) == 3, "rank 1 wrote three chunks before it was killed"
    assert not (tmp_path / "two").exists()

    resumed = torchrun(2, "score", *arguments)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (tmp_path / "two" / SCORES_NAME).read_bytes() == one.read_bytes()
    assert files.read_record(tmp_path / "two")["scored_in_this_run"] < 400


@pytest.mark.parametrize("kind", ["images", "audio"])
def test_captioning_in_two_processes_gives_the_one_process_captions(
    kind,
    models,  # noqa: F811 (the fixtures imported above)
    image_folder,  # noqa: F811
    audio_folder,  # noqa: F811
    tmp_path,
):
    if kind == "images":
        make, stage, caption = lambda out: image_config(models, image_folder, out), "caption-images", caption_images
    else:
        make, stage, caption = lambda out: audio_config(models, audio_folder, out), "caption-audio", caption_audio
    caption(make(tmp_path / "one"))
    result = torchrun(2, stage, *as_overrides(make(tmp_path / "two")))
    assert result.returncode == 0, result.stderr[-3000:]
    assert output_files(tmp_path / "two") == output_files(tmp_path / "one")  # captions.csv and errors.csv
    assert len(files.read_csv(tmp_path / "two" / "errors.csv")) > 0, "both ranks' failures are listed"


def test_fine_tuning_in_two_processes_matches_one_process(workspace, tmp_path):
    # The same global batch: 16 texts per step in one process, 8 per process in two.
    settings = {"num_epochs": 3, "tokenizer_dir": str(tmp_path / "tokenizer")}
    from semcal.lm.finetune import finetune

    one = files.read_record(finetune(_scratch(workspace["data"], tmp_path / "one", batch_size=16, **settings)))
    config = _scratch(workspace["data"], tmp_path / "two", batch_size=8, **settings)
    result = torchrun(2, "finetune", *overrides(config))
    assert result.returncode == 0, result.stderr[-3000:]
    two = files.read_record(tmp_path / "two")
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["steps"] == one["steps"], "two processes take the steps of one, each on half a batch"
    losses_one = [epoch["eval_loss"] for epoch in one["eval_loss_per_epoch"]]
    losses_two = [epoch["eval_loss"] for epoch in two["eval_loss_per_epoch"]]
    assert losses_two[-1] < two["eval_loss_before_training"] - 1.0, "two processes train"
    np.testing.assert_allclose(losses_two, losses_one, rtol=0.1)
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if p.name.startswith("checkpoint")) == []


def test_semcal_run_with_nproc_per_node_runs_the_whole_pipeline(tmp_path):
    run_dir = tmp_path / "demo"
    command = [sys.executable, "-m", "semcal", "demo", f"--run_dir={run_dir}", "--n_train=400", "--n_test=100"]
    result = subprocess.run(
        [*command, "--nproc_per_node=2"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "results_table.md").exists()
    assert result.stdout.count("evaluate mild: done") == 1, "the evaluation runs once, on the main process"
    for scores in (run_dir / "scores").glob("[!.]*"):
        assert files.read_record(scores)["processes"] == 2
    assert files.read_record(run_dir / "models" / "general")["processes"] == 2


def test_shards_are_disjoint_deterministic_and_whole(monkeypatch):
    from semcal.core import distributed

    shares = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        shares.append(distributed.shard(list(range(10))))
    assert shares == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_device_map_is_refused_with_several_processes(models, image_folder, tmp_path, monkeypatch):  # noqa: F811
    from semcal.core.errors import UserError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="device_map=auto spreads one model over all GPUs.*launch one process"):
        caption_images(image_config(models, image_folder, tmp_path / "out", device_map="auto"))
    assert not (tmp_path / "out").exists()


def test_on_the_cpu_captioning_computes_in_float32_and_on_this_process_device():
    import torch

    from semcal.captioning.captioners import device_and_dtype

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the CPU defaults do not apply")
    assert device_and_dtype(None, "auto") == ("cpu", torch.float32)
    assert device_and_dtype("cpu", "bfloat16") == ("cpu", torch.bfloat16)
