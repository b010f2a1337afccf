"""Typed results (semcal.reports.results, semcal.fit.fit_results, semcal.store.schema): one write and one read that
handle NaN and infinities, the schema version, and no reader that reads results by string key."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from pathlib import Path

import pytest

from semcal.cli.cli import main
from semcal.core.errors import UserError
from semcal.fit import fit_results
from semcal.reports import results as result_file
from semcal.store import schema
from tests.conftest import REPO_ROOT
from tests.results_example import results_dict

# The modules that read results.json or fit_results.json (and the records each reads): attributes only.
READERS = {
    "reports/report": (result_file,),
    "protocol/explain": (result_file,),
    "protocol/animate": (result_file,),
    "reports/item_report": (result_file,),
    "protocol/pipeline": (result_file,),
    "fit/fit_report": (result_file, fit_results),
}


def _example(tmp_path: Path) -> Path:
    written = results_dict(["a", "b"], {"a": 0.25, "b": 0.75})
    written["kl_general"] = "inf"  # as results.json holds an infinity
    written["filters"]["semcal"]["kl_ratio"] = None  # NaN
    written["filters"]["oracle"]["kl_mean"] = "-inf"
    written["filters"]["oracle"]["calibration"] = {"shift_statistic": "inf", "criterion": "moments"}  # stats
    path = tmp_path / "results.json"
    path.write_text(json.dumps(written))
    return path


def test_a_round_trip_keeps_infinities_and_nan_and_writes_them_as_plain_json(tmp_path):
    results = result_file.read(_example(tmp_path))
    assert results.kl_general == math.inf and isinstance(results.kl_general, float)
    assert math.isnan(results.chosen.kl_ratio)
    assert results.filters["oracle"].kl_mean == -math.inf
    assert results.filters["oracle"].stats["calibration"] == {"shift_statistic": math.inf, "criterion": "moments"}
    assert results.chosen.deception_reduction == 0.5 and results.decisions.filters["semcal"].threshold.tau == 0.5
    assert results.schema_version == result_file.SCHEMA_VERSION

    again = tmp_path / "again.json"
    result_file.write(again, results)
    text = again.read_text()
    assert "Infinity" not in text and "NaN" not in text, "strict JSON: every reader accepts it"
    written = json.loads(text)
    assert written["kl_general"] == "inf" and written["filters"]["oracle"]["kl_mean"] == "-inf"
    assert written["filters"]["semcal"]["kl_ratio"] is None
    assert written["filters"]["oracle"]["calibration"]["shift_statistic"] == "inf"  # stats merged into the block
    assert written == json.loads(_example(tmp_path).read_text()) | {"schema_version": result_file.SCHEMA_VERSION}
    assert result_file.read(again) == results


@pytest.mark.parametrize("version", [None, 0, result_file.SCHEMA_VERSION + 1])
def test_results_of_another_schema_version_are_refused_with_how_to_regenerate_them(tmp_path, version, capsys):
    path = _example(tmp_path)
    written = json.loads(path.read_text())
    written.pop("schema_version", None)
    if version is not None:
        written["schema_version"] = version
    path.write_text(json.dumps(written))
    with pytest.raises(UserError, match=r"this semcal reads version 1; re-run `semcal evaluate` .*to regenerate it\.$"):
        result_file.read(path)
    # `semcal table` refuses it too, in one sentence
    split = tmp_path / "run" / "evaluation" / "mild"
    split.mkdir(parents=True)
    path.rename(split / "results.json")
    assert main(["table", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "to regenerate it" in err and "Traceback" not in err and err.count("\n") == 1


def test_fit_results_of_another_schema_version_are_refused(tmp_path):
    path = tmp_path / fit_results.NAME
    path.write_text(json.dumps({"stage": "fit", "filter": "tfidf_mom"}))
    with pytest.raises(UserError, match=r"no schema version .*re-run `semcal fit` .*to regenerate it\.$"):
        fit_results.read(path)


def test_a_missing_field_or_a_wrong_type_is_one_sentence(tmp_path):
    path = _example(tmp_path)
    written = json.loads(path.read_text())
    del written["filters"]["semcal"]["kl_mean"]
    path.write_text(json.dumps(written))
    with pytest.raises(UserError, match=r"filters: semcal lacks its kl_mean; re-run `semcal evaluate`"):
        result_file.read(path)
    written = json.loads(_example(tmp_path).read_text())
    written["M"] = "two"
    path.write_text(json.dumps(written))
    with pytest.raises(UserError, match="M is 'two', not a number"):
        result_file.read(path)


def _field_names(*modules) -> set[str]:
    records = [record for module in modules for record in vars(module).values()]
    return {
        spec.name
        for record in records
        if isinstance(record, type) and dataclasses.is_dataclass(record)
        for spec in dataclasses.fields(record)
    }


def _free_form(node: ast.expr) -> bool:
    """Settings (`config`) and a block's free-form statistics (`stats`) are plain dicts by design."""
    return (isinstance(node, ast.Attribute) and node.attr in ("config", "stats")) or (
        isinstance(node, ast.Name) and node.id == "config"
    )


def string_key_reads(source: str, names: set[str]) -> list[str]:
    """`x["name"]` and `x.get("name")` reads of a results field `name` in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            target, key = node.value, node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            target, key = node.func.value, node.args[0] if node.args else None
        else:
            continue
        if isinstance(key, ast.Constant) and key.value in names and not _free_form(target):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_reader_reads_results_by_string_key():
    names = _field_names(result_file, fit_results)
    assert {"kl_mean", "filters", "per_item", "trusted_share", "brier"} <= names
    caught = string_key_reads('semcal = results["filters"]["semcal"]\nx = block.get("kl_mean")', names)
    assert len(caught) == 2, "the check finds the reads it is for"
    assert string_key_reads('seed = results.config["seed"]\nfit = block.stats.get("calibration")', names) == []
    for module, records in READERS.items():
        source = (REPO_ROOT / "semcal" / f"{module}.py").read_text(encoding="utf-8")
        assert string_key_reads(source, _field_names(*records)) == [], module


def test_schema_numbers_only_turn_inf_strings_into_floats():
    assert schema.numbers({"a": ["inf", "-inf", "x", 1]}) == {"a": [math.inf, -math.inf, "x", 1]}
    assert math.isnan(schema.as_float(None, "here", "fix it"))
