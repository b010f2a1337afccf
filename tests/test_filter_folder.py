"""A filter folder is checked when it loads (issue 16): a damaged or tampered filter.json, array
or vocabulary is refused in one sentence naming the file and the field, never run with NaN or a
silent 100%; and `semcal filter` with such a folder keeps an existing output. Explicit cases and a
property-based fuzz of mutated folders (every field of filter.json, arrays, missing files)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semcal.core.errors import UserError
from semcal.filter.filtering import Filter
from semcal.store import files
from semcal.stream.filter_stream import FilterConfig, filter_texts
from tests.test_sources import subset_data

TEXTS = ["the team won the match today", "she baked fresh bread again", "a striker scored a goal", ""]
PRECIOUS = "precious\n"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A small tfidf_labmom filter (labels: sport and food), saved once."""
    data, _ = subset_data()
    folder = tmp_path_factory.mktemp("filter_folder") / "filter"
    Filter.fit("tfidf", "labmom", data).save(folder)
    return folder


def _copy(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / f"filter{len(list(tmp_path.iterdir()))}"))


def _edit(folder: Path, change) -> Path:
    spec = files.read_json(folder / "filter.json")
    change(spec)
    (folder / "filter.json").write_text(json.dumps(spec))  # json writes NaN and Infinity as Python does
    return folder


def _set(path: str | tuple[str, ...], value):
    """Set the field at `path` (dotted, or a tuple of keys); nothing when a parent is no longer an object."""

    def change(spec):
        *parents, key = path.split(".") if isinstance(path, str) else path
        node = spec
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node[key] = value

    return change


CASES = {
    "m is text": (_set("m", "abc"), "'m' must be a finite number >= 1"),
    "m is 0": (_set("m", 0), "'m' must be a finite number >= 1"),
    "m is -3": (_set("m", -3), "'m' must be a finite number >= 1"),
    "m is NaN": (_set("m", math.nan), "'m' must be a finite number >= 1"),
    "temperature is NaN": (_set("calibration.temperature", math.nan), "calibration 'temperature' must be a finite"),
    "shift is 1e400": (_set("calibration.shift", math.inf), "calibration 'shift' must be a finite"),
    "unknown link": (_set("calibration.link", "cubic"), "must have a link of"),
    "unknown calibration": (_set("calibration.name", "magic"), "the calibration name 'magic' is not one of"),
    "unknown source": (_set("source", "crystal_ball"), "'source' 'crystal_ball' is not one of"),
    "format version as text": (_set("format_version", "2"), "has format_version '2'; this semcal reads the integer 2"),
    "prior is NaN": (_set("source_state.prior", math.nan), "'prior' must be a finite number"),
    "form unknown": (_set("source_state.form", "both"), "'form' must be 'subset' or 'pooled'"),
    "missing m": (lambda spec: spec.pop("m"), "'m' must be a finite number >= 1"),
    "no source state": (lambda spec: spec.pop("source_state"), "'source_state' must be a JSON object"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_tampered_filter_json_is_refused_naming_the_field(saved, tmp_path, case):
    change, message = CASES[case]
    folder = _edit(_copy(saved, tmp_path), change)
    with pytest.raises(UserError, match=message) as raised:
        Filter.load(folder)
    assert "filter.json" in str(raised.value) or str(folder) in str(raised.value)


def test_damaged_arrays_and_vocabularies_are_refused(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    (folder / "tfidf_vocabulary.json").write_text(json.dumps(list(range(5))))
    with pytest.raises(UserError, match="tfidf_vocabulary.json is not a map of n-grams to columns"):
        Filter.load(folder)
    folder = _copy(saved, tmp_path)
    (folder / "tfidf_vocabulary.json").unlink()
    with pytest.raises(UserError, match="lacks tfidf_vocabulary.json: copy the whole filter folder again"):
        Filter.load(folder)
    folder = _copy(saved, tmp_path)
    data = (folder / "tfidf.safetensors").read_bytes()
    (folder / "tfidf.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="tfidf.safetensors is not a readable safetensors file"):
        Filter.load(folder)
    folder = _copy(saved, tmp_path)
    arrays = files.read_safetensors(folder / "tfidf.safetensors")
    files.write_safetensors(folder / "tfidf.safetensors", {**arrays, "coef": arrays["coef"] * np.nan})
    with pytest.raises(UserError, match="array 'coef' holds non-finite or non-float values"):
        Filter.load(folder)
    folder = _copy(saved, tmp_path)
    files.write_safetensors(folder / "tfidf.safetensors", {**arrays, "coef": arrays["coef"][:-1]})
    with pytest.raises(UserError, match="the TF-IDF coefficients .* and idf .* differ in length"):
        Filter.load(folder)
    folder = _copy(saved, tmp_path)
    (folder / "filter.json").write_text("{ not json")
    with pytest.raises(UserError, match="filter.json is not valid JSON"):
        Filter.load(folder)


def test_a_model_without_a_fingerprint_is_refused(saved, tmp_path):
    """A local model recorded with weights_fingerprint null cannot be checked, so it is not run."""
    from semcal.lm.models import check_model_record

    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(UserError, match="records no weights fingerprint"):
        check_model_record("real model", {"path": str(model), "weights_fingerprint": None}, tmp_path)


# ---- the fuzz -------------------------------------------------------------------------------------

JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _paths(spec, prefix=()):
    """Every field of filter.json, as a tuple of keys."""
    for key, value in spec.items():
        path = (*prefix, key)
        yield path
        if isinstance(value, dict):
            yield from _paths(value, path)


def _mutate(folder: Path, mutation) -> None:
    kind, pick, value = mutation
    needed = {
        "field": "filter.json",
        "drop": "filter.json",
        "truncate": "tfidf.safetensors",
        "scale": "tfidf.safetensors",
    }
    if kind in needed and not (folder / needed[kind]).is_file():
        return  # an earlier mutation deleted it
    if kind == "field":
        paths = sorted(_paths(files.read_json(folder / "filter.json")))
        _edit(folder, _set(paths[pick % len(paths)], value))
    elif kind == "drop":
        paths = sorted(_paths(files.read_json(folder / "filter.json")))
        *parents, key = paths[pick % len(paths)]

        def drop(spec):
            node = spec
            for parent in parents:
                node = node.get(parent) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(key, None)

        _edit(folder, drop)
    elif kind == "delete":
        victims = sorted(path for path in folder.rglob("*") if path.is_file())
        victims[pick % len(victims)].unlink()
    else:  # "truncate" or "scale" an array file
        arrays = files.read_safetensors(folder / "tfidf.safetensors")
        name = sorted(arrays)[pick % len(arrays)]
        if kind == "truncate":
            arrays[name] = arrays[name][: max(0, len(arrays[name]) - 1 - pick % 3)]
        else:
            arrays[name] = arrays[name] * (value if isinstance(value, float) else np.inf)
        files.write_safetensors(folder / "tfidf.safetensors", arrays)


MUTATIONS = st.tuples(
    st.sampled_from(["field", "field", "field", "drop", "delete", "truncate", "scale"]),
    st.integers(0, 50),
    JSON_VALUES,
)


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(MUTATIONS, min_size=1, max_size=3))
def test_fuzz_a_mutated_filter_folder_loads_right_or_is_one_sentence(saved, tmp_path_factory, mutations):
    folder = Path(shutil.copytree(saved, tmp_path_factory.mktemp("fuzz") / "filter"))
    for mutation in mutations:
        _mutate(folder, mutation)
    try:
        loaded = Filter.load(folder)
    except UserError as err:
        assert "\n" not in str(err) and "Traceback" not in str(err)
        output = folder.parent / "keep.csv"
        output.write_text(PRECIOUS)
        source = folder.parent / "in.txt"
        source.write_text("\n".join(TEXTS[:3]) + "\n")
        with pytest.raises(UserError):
            filter_texts(FilterConfig(filter=str(folder), input=str(source), output=str(output)))
        assert output.read_text() == PRECIOUS, "a refused filter leaves the existing output as it was"
        return
    accept = loaded.accept_probs(TEXTS[:3])
    assert np.isfinite(accept).all() and ((accept >= 0) & (accept <= 1)).all(), accept
