"""The run-state protocol every stage uses (semcal.store.runstate)."""

import os
import subprocess
import sys

import pytest

from semcal.core.errors import UserError
from semcal.store import files, runstate
from semcal.store.runstate import StageOutput


def _identity(value=1, data="abc"):
    return runstate.identity(
        "demo", {"value": value, "output_dir": "x", "chunk": 3}, {"data": data}, ("output_dir", "chunk")
    )


def _build(folder, identity, content="new", fail=False, **kwargs):
    output = StageOutput("demo", folder, **kwargs)
    if output.up_to_date(identity):
        return "skipped"
    with output.building(identity) as staging:
        (staging / "result.txt").write_text(content)
        if fail:
            raise RuntimeError("the stage broke")
        output.finish({"value": identity["settings"]["value"]}, summary="ok")
    return "built"


def test_finished_output_is_up_to_date_whatever_the_path_spelling(tmp_path, monkeypatch):
    assert _build(tmp_path / "out", _identity()) == "built"
    monkeypatch.chdir(tmp_path)
    # The identity ignores paths: the relative spelling, or the folder moved, continues.
    assert _build("out", _identity()) == "skipped"
    os.replace(tmp_path / "out", tmp_path / "moved")
    assert _build(tmp_path / "moved", _identity()) == "skipped"
    assert files.read_record(tmp_path / "moved")["identity"] == _identity()


def test_changed_inputs_rebuild_and_a_failed_run_keeps_the_finished_output(tmp_path):
    folder = tmp_path / "out"
    _build(folder, _identity(), content="first")
    with pytest.raises(RuntimeError):
        _build(folder, _identity(data="changed"), content="second", fail=True)
    assert (folder / "result.txt").read_text() == "first"  # untouched by the failed run
    assert _build(folder, _identity(data="changed"), content="second") == "built"
    assert (folder / "result.txt").read_text() == "second"
    assert not folder.with_name(".out.partial").exists()


def test_protected_output_of_other_settings_needs_overwrite(tmp_path):
    folder = tmp_path / "out"
    _build(folder, _identity(value=1), protect=True)
    with pytest.raises(UserError, match=r"value: 1 there, 2 now.*overwrite=true"):
        _build(folder, _identity(value=2), protect=True)
    assert _build(folder, _identity(value=2), protect=True, overwrite=True) == "built"


def test_unfinished_run_resumes_only_with_its_own_settings(tmp_path):
    folder = tmp_path / "out"
    with pytest.raises(RuntimeError):
        _build(folder, _identity(value=1), fail=True)
    output = StageOutput("demo", folder)
    assert not output.up_to_date(_identity(value=2))
    with pytest.raises(UserError, match=r"unfinished demo run with other settings \(value: 1 there, 2 now\)"):
        with output.building(_identity(value=2)):
            pass
    output = StageOutput("demo", folder)
    with output.building(_identity(value=1)) as staging:
        assert output.resumed and (staging / "result.txt").exists()
    # Stale inputs: the unfinished run is discarded, not resumed.
    output = StageOutput("demo", folder)
    with output.building(_identity(value=1, data="new")) as staging:
        assert not output.resumed and not (staging / "result.txt").exists()


def test_folders_that_are_not_this_stages_are_refused_before_any_work(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        StageOutput("demo", a_file)
    files.write_record(tmp_path / "model", "finetune", {})
    with pytest.raises(UserError, match="holds the output of the 'finetune' stage"):
        StageOutput("demo", tmp_path / "model")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(UserError, match="holds other files, not written by semcal"):
        StageOutput("demo", tmp_path / "mine")
    with pytest.raises(UserError, match="cannot write to"):
        StageOutput("demo", a_file / "below")
    with pytest.raises(UserError, match="output_dir is empty"):
        StageOutput("demo", "")


def test_a_second_writer_is_refused(tmp_path):
    folder = tmp_path / "out"
    with runstate.hold_lock(folder):
        with pytest.raises(UserError, match=r"being written by semcal process \d+"):
            _build(folder, _identity())
    assert _build(folder, _identity()) == "built"


def test_kill_point_kills_at_the_nth_call(tmp_path):
    code = (
        "from semcal.store import runstate\nfor i in range(5):\n    print(i, flush=True)\n    runstate.kill_point('chunk')\n"
    )
    env = {**os.environ, runstate.KILL_ENV: "chunk:3"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == -9 and result.stdout.split() == ["0", "1", "2"]


def test_a_stage_with_nothing_to_resume_leaves_no_partial_folder(tmp_path):
    folder = tmp_path / "out"
    with pytest.raises(RuntimeError):
        _build(folder, _identity(value=1), fail=True, resumable=False)
    assert not folder.with_name(".out.partial").exists()
    assert _build(folder, _identity(value=2), resumable=False) == "built"
