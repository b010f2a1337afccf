"""Hardening of the commands that deliver the filter (issue 16): `semcal filter` writes like the
stages (built beside, swapped in on success, one writer, leftovers removed), decodes every line on
its own, and answers every user mistake with one sentence; a property-based fuzz test of mutated
input lines checks that no input costs a traceback or an existing output."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semcal.cli.cli import main
from semcal.core.errors import UserError
from semcal.store import files, runstate, text_lines
from semcal.stream.filter_stream import FilterConfig, filter_texts
from tests.conftest import REPO_ROOT
from tests.test_filtering import tfidf_run  # noqa: F401  (the fixture: the default filter, fitted once here)

PRECIOUS = "precious\n"


def _run(argv, capsys):
    capsys.readouterr()
    code = main(["filter", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _texts(tfidf_run, count=6):  # noqa: F811
    return tfidf_run["per_text"]["text"].tolist()[:count]


def _stdin_bytes(monkeypatch, data: bytes) -> None:
    """Standard input as a real one is: text over a byte buffer."""
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


# ---- the output: built beside, swapped in on success, one writer ----------------------------------


def test_a_run_that_fails_leaves_the_existing_output_as_it_was(tfidf_run, tmp_path, monkeypatch):  # noqa: F811
    from semcal.filter import filtering

    def broken(self, texts, top_tokens=0):
        raise RuntimeError("the filter broke")

    source = tmp_path / "texts.txt"
    source.write_text("\n".join(_texts(tfidf_run)) + "\n")
    output = tmp_path / "keep.csv"
    output.write_text(PRECIOUS)
    monkeypatch.setattr(filtering.Filter, "score", broken)
    with pytest.raises(RuntimeError, match="the filter broke"):
        filter_texts(FilterConfig(filter=str(tfidf_run["filter"]), input=str(source), output=str(output)))
    assert output.read_text() == PRECIOUS
    assert not list(tmp_path.glob(".keep.csv.tmp-*")), "no temporary file is left behind"


def test_an_empty_csv_is_one_sentence_and_keeps_the_output(tfidf_run, tmp_path, capsys):  # noqa: F811
    output = tmp_path / "keep.csv"
    output.write_text(PRECIOUS)
    for content in ("", "text\n"):  # 0 bytes, a header alone
        source = tmp_path / "empty.csv"
        source.write_text(content)
        code, _, err = _run([f"--filter={tfidf_run['filter']}", f"--input={source}", f"--output={output}"], capsys)
        assert code == 2 and "holds no texts" in err and "Traceback" not in err
        assert output.read_text() == PRECIOUS


def test_a_second_writer_of_the_same_output_is_refused(tfidf_run, tmp_path, capsys):  # noqa: F811
    source = tmp_path / "texts.txt"
    source.write_text("a dog barks\n")
    output = tmp_path / "same.csv"
    output.write_text(PRECIOUS)
    with runstate.hold_lock(output):  # another run writing it now
        code, _, err = _run([f"--filter={tfidf_run['filter']}", f"--input={source}", f"--output={output}"], capsys)
    assert code == 2 and "is being written by semcal process" in err
    assert output.read_text() == PRECIOUS


def test_leftovers_of_killed_runs_are_removed(tfidf_run, tmp_path, capsys):  # noqa: F811
    source = tmp_path / "texts.txt"
    source.write_text("a dog barks\n")
    output = tmp_path / "out.csv"
    leftover = tmp_path / ".out.csv.tmp-999999"  # what `kill -9` of a run leaves
    leftover.write_text("id,text\n1,half")
    code, out, _ = _run([f"--filter={tfidf_run['filter']}", f"--input={source}", f"--output={output}"], capsys)
    assert code == 0 and not leftover.exists() and "removed 1 temporary files" in out
    assert len(pd.read_csv(output)) == 1


def test_an_output_that_is_a_folder_or_unwritable_is_refused_before_any_work(tmp_path, capsys):
    source = tmp_path / "texts.txt"
    source.write_text("a dog barks\n")
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    missing_filter = tmp_path / "no_filter"  # the output is checked before the filter is even loaded
    for output, message in ((folder, "is a folder"), (blocker / "out.csv", "which is a file")):
        code, _, err = _run([f"--filter={missing_filter}", f"--input={source}", f"--output={output}"], capsys)
        assert code == 2 and message in err and "Traceback" not in err


# ---- decoding each line on its own ---------------------------------------------------------------


def test_a_stream_survives_a_line_that_is_not_utf8(tfidf_run, monkeypatch, capsys):  # noqa: F811
    texts = _texts(tfidf_run, 3)
    lines = [
        json.dumps({"text": texts[0]}).encode(),
        b'{"text": "caf\xe9 noise"}',
        json.dumps({"text": texts[1]}).encode(),
    ]
    _stdin_bytes(monkeypatch, b"\n".join(lines) + b"\n")
    code, out, err = _run([f"--filter={tfidf_run['filter']}", "--input=-", "--stream=true", "--batch_size=1"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [record["line"] for record in records] == [1, 2, 3]
    assert records[1]["error"].startswith("line 2: not valid utf-8 (byte 0xe9")
    assert [record["text"] for record in (records[0], records[2])] == texts[:2]
    assert "--encoding" in err, "the warning names the setting that fixes it"


@pytest.mark.parametrize("kind", ["latin-1 jsonl", "latin-1 text", "latin-1 csv", "binary"])
def test_a_file_in_another_encoding_is_one_sentence_naming_the_encoding_setting(
    tfidf_run,  # noqa: F811
    tmp_path,
    capsys,
    kind,
):
    rows = ["un café au lait", "a dog barks"]
    source, data = {
        "latin-1 jsonl": ("in.jsonl", "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in rows)),
        "latin-1 text": ("in.txt", "\n".join(rows) + "\n"),
        "latin-1 csv": ("in.csv", "text\n" + "\n".join(rows) + "\n"),
        "binary": ("in.txt", None),
    }[kind]
    source = tmp_path / source
    source.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00" if data is None else data.encode("latin-1"))
    output = tmp_path / "keep.jsonl"
    output.write_text(PRECIOUS)
    argv = [f"--filter={tfidf_run['filter']}", f"--input={source}", f"--output={output}"]
    code, _, err = _run(argv, capsys)
    assert code == 2 and "utf-8" in err and "--encoding=latin-1" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and output.read_text() == PRECIOUS
    if data is not None:
        code, _, err = _run([*argv, "--encoding=latin-1"], capsys)
        records = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
        assert code == 0 and records[0]["text"] == "un café au lait", err


def test_a_later_bad_line_of_a_file_is_an_error_record(tfidf_run, tmp_path, capsys):  # noqa: F811
    source = tmp_path / "in.txt"
    source.write_bytes(b"a dog barks\ncaf\xe9\nrain falls\n" + b"x" * (text_lines.MAX_LINE_BYTES + 10) + b"\nlast one\n")
    output = tmp_path / "out.jsonl"
    code, _, _ = _run([f"--filter={tfidf_run['filter']}", f"--input={source}", f"--output={output}"], capsys)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert code == 0 and [r["line"] for r in records] == [1, 2, 3, 4, 5]
    assert "not valid utf-8" in records[1]["error"] and "longer than 1 MiB" in records[3]["error"]
    assert records[4]["text"] == "last one"


# ---- one sentence instead of a traceback ---------------------------------------------------------


def test_a_csv_read_as_parquet_is_one_sentence(tfidf_run, tmp_path, capsys):  # noqa: F811
    source = tmp_path / "in.csv"
    source.write_text("text\na dog barks\n")
    code, _, err = _run([f"--filter={tfidf_run['filter']}", f"--input={source}", "--input_format=parquet"], capsys)
    assert code == 2 and "cannot be read as parquet" in err and "input_format" in err and "Traceback" not in err


def test_an_unknown_encoding_is_one_sentence(tmp_path, capsys):
    code, _, err = _run([f"--filter={tmp_path}", "--input=-", "--encoding=klingon"], capsys)
    assert code == 2 and "encoding='klingon'" in err


def test_a_closed_standard_output_ends_quietly(tfidf_run, tmp_path):  # noqa: F811
    """`semcal filter ... | head -1`: the reader leaves after one record."""
    source = tmp_path / "texts.txt"
    source.write_text("".join(f"a dog barks {i}\n" for i in range(3000)))
    command = [sys.executable, "filter.py", f"--filter={tfidf_run['filter']}", f"--input={source}", "--batch_size=1"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert json.loads(process.stdout.readline())["line"] == 1
        process.stdout.close()  # what `head -1` does after its line
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0 and b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()


# ---- empty captions, permissions, help ------------------------------------------------------------


def test_an_empty_caption_gets_an_error_record(tfidf_run, tmp_path, capsys):  # noqa: F811
    source = tmp_path / "in.csv"
    pd.DataFrame({"text": ["a dog barks", "", "  "]}).to_csv(source, index=False)
    output = tmp_path / "out.csv"
    code, _, _ = _run([f"--filter={tfidf_run['filter']}", f"--input={source}", f"--output={output}"], capsys)
    table = pd.read_csv(output, keep_default_na=False)
    assert code == 0 and table["error"].tolist() == [
        "",
        "row 2: empty text (nothing to filter)",
        "row 3: empty text (nothing to filter)",
    ]
    assert table["accept_prob"].tolist()[1:] == ["", ""]


def test_safetensors_files_get_the_usual_permissions(tmp_path):
    import numpy as np

    umask = os.umask(0o022)
    os.umask(umask)
    path = files.write_safetensors(tmp_path / "arrays.safetensors", {"a": np.zeros(3)})
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert files.read_safetensors(path)["a"].tolist() == [0.0, 0.0, 0.0]


def test_help_lists_the_output_columns_and_the_overwrite_rule(capsys):
    assert main(["filter", "--help"]) == 0
    out = capsys.readouterr().out
    for column in ("id", "text", "score", "accept_prob", "decision", "tokens_up", "tokens_down", "line", "error"):
        assert f"\n  {column} " in out
    assert "existing output file is replaced, but only when the run succeeds" in out
    assert "--encoding=utf-8" in out


def test_max_length_below_two_is_one_sentence():
    from semcal.lm.framing import frame_texts

    with pytest.raises(UserError, match="max_length=-5: .* set max_length to 2 or more"):
        frame_texts(None, ["a dog"], "bos_eos", -5)


# ---- reports: a filter that makes things worse, a data set too small -------------------------------


def test_a_negative_reduction_and_a_small_data_set_are_warned_in_summary_and_table(tfidf_run, tmp_path):  # noqa: F811
    import copy

    from semcal.protocol import pipeline
    from semcal.reports import report
    from semcal.reports import results as result_file

    results = copy.deepcopy(tfidf_run["results"])
    evaluated = results["counts"]["evaluated"]
    assert evaluated < report.MIN_EVALUATED_TEXTS
    [small] = [w for w in results["warnings"] if "too small" in w]  # the evaluation itself says so
    assert f"{evaluated} texts evaluated" in small and "at least 1000 evaluated texts" in small
    assert "## Warnings" in (tfidf_run["root"] / "out" / "summary.md").read_text()

    semcal = results["filters"]["semcal"]
    semcal["deception_reduction"], semcal["kl_mean"] = -0.724, 1.724 * results["kl_general"]
    worse, small_again = report.reliability_warnings(result_file.from_dict(results))
    assert "makes the stream worse than no filter: deception reduction -72.4%" in worse and small_again == small
    assert "worse than no filter" in report.evaluation_summary_markdown(result_file.from_dict(results))

    folder = tmp_path / "run" / "evaluation" / results["distortion"]
    files.write_json(folder / "results.json", results)
    table = pipeline.write_table([tmp_path / "run"], tmp_path / "table")
    assert "Warnings:" in table and f"run / {results['distortion']}: the filter tfidf_labmom makes the stream" in table
    assert "Warnings:" in (tmp_path / "table.md").read_text()

    results["counts"]["evaluated"], results["M"] = 100000, 2.0
    semcal["deception_reduction"] = 0.5
    assert report.reliability_warnings(result_file.from_dict(results)) == [], (
        "enough texts and a reduction above 0: nothing to warn"
    )


# ---- fuzz: mutated input lines -------------------------------------------------------------------

FUZZ_LIMIT = 512  # bytes: lines past it stand for huge lines, without writing megabytes per example
_texts_strategy = st.text(max_size=30)
_fuzz_line = st.one_of(
    _texts_strategy.map(lambda t: json.dumps({"text": t}).encode()),  # valid, escaped
    _texts_strategy.map(lambda t: json.dumps({"text": t}, ensure_ascii=False).encode()),  # valid, raw UTF-8
    _texts_strategy.map(lambda t: json.dumps({"text": t}, ensure_ascii=False).encode("latin-1", "replace")),
    _texts_strategy.map(lambda t: json.dumps({"text": t}, ensure_ascii=False).encode("utf-16")),
    _texts_strategy.map(str.encode),  # plain text where JSON is due
    st.binary(max_size=40),  # any bytes: control characters, invalid UTF-8, NUL
    st.integers(FUZZ_LIMIT, 3 * FUZZ_LIMIT).map(lambda n: b'{"text": "' + b"a" * n + b'"}'),  # huge
    st.sampled_from(
        [
            b'{"text": "a dog',
            b"[1, 2]",
            b'{"text": 5}',
            b'{"other": 1}',
            b'{"text": ""}',
            b'{"text": "\\ud800 lone"}',
            b'{"text": "nul \\u0000 inside"}',
            b"[" * 3000,
            b'{"text": "x", "n": 1' + b"0" * 5000 + b"}",
            b"\xef\xbb\xbf" + b'{"text": "after a byte order mark"}',
            b"\r",
            b"   ",
        ]
    ),
)
_fuzz_input = st.tuples(st.booleans(), st.lists(_fuzz_line, min_size=1, max_size=6), st.sampled_from(["file", "stdin"]))


@pytest.fixture(scope="module")
def cached_filter(tfidf_run):  # noqa: F811
    """The module's filter, loaded once: each example then costs the filtering alone."""
    from semcal.filter.filtering import Filter

    return Filter.load(tfidf_run["filter"])


def _expected_lines(lines: list[bytes]) -> list[int]:
    """The numbers of the lines that must each give one record: all but blank ones."""

    def blank(line: bytes) -> bool:
        try:
            return not line.decode("utf-8").strip()
        except UnicodeDecodeError:
            return False

    return [number for number, line in enumerate(lines, 1) if not blank(line)]


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(_fuzz_input)
def test_fuzz_mutated_lines_never_cost_a_traceback_or_the_existing_output(tfidf_run, cached_filter, tmp_path, case):  # noqa: F811
    from unittest import mock

    from semcal.filter import filtering

    valid_first, lines, where = case
    if valid_first:  # past the first line, where a file with a bad one is refused as a whole
        lines = [json.dumps({"text": "a dog barks"}).encode(), *lines]
    data = b"".join(line.replace(b"\n", b" ") + b"\n" for line in lines)
    lines = [line.replace(b"\n", b" ") for line in lines]
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(data)
    output.write_text(PRECIOUS)
    config = FilterConfig(filter=str(tfidf_run["filter"]), input=str(source), output=str(output), batch_size=2)
    stdout = io.StringIO()
    if where == "stdin":
        config = FilterConfig(filter=str(tfidf_run["filter"]), input="-", output="-", stream=True, batch_size=2)
    with (
        mock.patch.object(filtering.Filter, "load", lambda folder: cached_filter),
        mock.patch.object(text_lines, "MAX_LINE_BYTES", FUZZ_LIMIT),
        mock.patch("sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")),
        mock.patch("sys.stdout", stdout),
    ):
        try:
            filter_texts(config)
        except UserError as err:
            message = str(err)
            assert "\n" not in message and ("set " in message or "give " in message), message
            assert output.read_text() == PRECIOUS, "a refused run leaves the existing output as it was"
            return
    written = stdout.getvalue() if where == "stdin" else output.read_text(encoding="utf-8")
    records = [json.loads(line) for line in written.split("\n") if line]  # not splitlines: U+0085 is no line end
    assert [record["line"] for record in records] == _expected_lines(lines)
    for record in records:
        assert ("decision" in record) != ("error" in record), record
        assert "error" not in record or record["error"].startswith(("line ", "row "))
    assert not list(tmp_path.glob(".out.jsonl.tmp-*"))
