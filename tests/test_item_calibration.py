"""Per-item calibration (semcal.protocol.item_metrics, semcal.protocol.item_evaluation) and decision modes
(semcal.filter.decisions): the metrics' math, a mis-scaled filter scoring worse than the fitted one,
the evaluation's per_item and decisions blocks with the reliability diagram, and `semcal
filter --decision=threshold` passing the target rate on the stream."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from semcal.cli.cli import main
from semcal.core.errors import UserError
from semcal.filter import decisions, ratio_calibration
from semcal.filter.calibrations import Link
from semcal.filter.filtering import Filter
from semcal.filter.fit_data import FitData, Items
from semcal.protocol import item_metrics
from semcal.protocol.evaluation import evaluate
from semcal.store import files
from tests.test_calibrated_filters import _config
from tests.test_evaluation import _build_dataset

# ---- the metrics -----------------------------------------------------------------------------


def test_perfect_and_constant_forecasts_score_as_they_must():
    is_real = np.array([True, False, False, True, False, False, False, False])
    perfect = item_metrics.item_metrics(is_real.astype(float), is_real)
    assert perfect["brier"] == 0 and perfect["ece"] == 0 and perfect["roc_auc"] == 1 and perfect["mcc"] == 1
    assert perfect["sn34"] == pytest.approx(1.0)
    constant = item_metrics.item_metrics(np.full(8, 0.25), is_real)
    assert constant["mcc"] == 0 and constant["roc_auc"] == 0.5 and constant["brier"] == pytest.approx(0.1875)
    assert len(constant["reliability"]) == 1, "tied forecasts stay in one bin"
    # GASBench: sqrt(mcc_norm^1.2 * brier_norm^1.8); a Brier above 0.25 scores 0.
    assert item_metrics.sn34(0.0, 0.1875) == pytest.approx(np.sqrt(0.5**1.2 * 0.25**1.8))
    assert item_metrics.sn34(0.5, 0.3) == 0.0


def test_the_pooled_forecast_is_converted_from_the_ratio():
    # r = M a = 1 with as many real as general rows: an even chance.
    assert item_metrics.membership_probability(np.array([0.2]), 5.0, "pooled", 100, 100)[0] == pytest.approx(0.5)
    assert item_metrics.constant_probability(5.0, "pooled", 25, 75) == pytest.approx(0.25)
    assert item_metrics.constant_probability(5.0, "subset") == pytest.approx(0.2)


def _membership_data(seed: int, n: int = 3000) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Texts whose label word sets the membership: P(real | y) = q(y) / (p(y) M), the research protocol."""
    rng = np.random.default_rng(seed)
    words = np.array(["dog barks", "rain falls", "car engine", "bird sings"])
    p_member = np.array([0.6, 0.3, 0.1, 0.05])  # r(y) / M
    codes = rng.integers(0, 4, n)
    fillers = rng.choice(["loudly", "softly", "nearby", "far away", "at night", "today"], n)
    texts = [f"a {words[c]} {f}" for c, f in zip(codes, fillers, strict=True)]
    return texts, rng.random(n) < p_member[codes], codes


def test_a_mis_scaled_filter_scores_a_worse_brier_and_ece_than_the_fitted_one():
    texts, is_real, codes = _membership_data(0)
    heldout = np.zeros(len(texts), dtype=bool)
    heldout[::4] = True
    stream = Items(texts[1::2])
    m = 1 / is_real.mean()
    data = FitData(texts, is_real, heldout, stream, m=m, labels=list("abcd"), label_codes=codes)
    fitted = Filter.fit("tfidf", "likelihood", data)
    # Temperature x 3, the shift normalised again so both pass 1/M of the stream: only the scale differs.
    temperature = 3 * fitted.link.temperature
    stream_ratio = fitted.source.log_ratio(stream)
    shift = ratio_calibration.stream_shift(stream_ratio, m, temperature)
    mis_scaled = Filter(fitted.source, "likelihood", Link(temperature=temperature, shift=shift), m)
    fresh_texts, fresh_real, _ = _membership_data(1)  # rows neither filter was fitted on
    scored = {
        name: item_metrics.item_metrics(f.accept_probs(fresh_texts), fresh_real)
        for name, f in (("fitted", fitted), ("mis-scaled", mis_scaled))
    }
    assert scored["mis-scaled"]["brier"] > scored["fitted"]["brier"]
    assert scored["mis-scaled"]["ece"] > scored["fitted"]["ece"]
    constant = item_metrics.item_metrics(np.full(len(fresh_real), 1 / m), fresh_real)
    assert scored["fitted"]["brier"] < constant["brier"] and scored["fitted"]["sn34"] > constant["sn34"]


# ---- decision modes --------------------------------------------------------------------------


def test_top_keeps_the_running_rate_and_breaks_ties_by_order():
    top = decisions.TopShare(0.25)
    kept = np.concatenate([top(np.full(10, 0.5)), top(np.linspace(0, 1, 10)), top(np.ones(3))])
    assert kept.sum() == round(0.25 * 23)
    assert kept[:10].tolist() == [True, True] + [False] * 8 + [], "ties: the first in input order"


def test_saved_thresholds_are_checked():
    thresholds = decisions.Thresholds.of(np.linspace(0, 1, 101), np.linspace(0.5, 1, 11))
    again = decisions.Thresholds.from_dict(json.loads(json.dumps(thresholds.to_dict())), "filter.json")
    assert again.for_rate(0.2) == pytest.approx(0.8) and again.for_false_rejection(0.1) == pytest.approx(0.55)
    damaged = {**thresholds.to_dict(), "stream": thresholds.stream[::-1]}
    with pytest.raises(UserError, match="non-decreasing"):
        decisions.Thresholds.from_dict(damaged, "filter.json")
    with pytest.raises(UserError, match="decision=threshold"):
        decisions.check_settings("threshold", 0.2, 0.1)


# ---- the evaluation and semcal filter --------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("item_calibration")
    splits = _build_dataset(root / "data")
    results = evaluate(_config(root, splits, candidates=True, classifier=True, n_runs=20))
    return {"root": root, "results": results, "out": root / "out"}


def test_results_hold_per_item_metrics_for_every_filter_and_the_constant(evaluated):
    results = evaluated["results"]
    per_item = results["per_item"]
    measured = {name for name in results["filters"] if name not in ("semcal", "no_filter", "oracle")}
    assert measured | set(results["variants"]) <= set(per_item["filters"]) | set(per_item["skipped"])
    assert {"tfidf_labmom", "tfidf_likelihood", "classifier", "clipped"} <= set(per_item["filters"])
    assert per_item["reference"]["forecast"] == pytest.approx(1 / results["M"])
    for metrics in [per_item["reference"], *per_item["filters"].values()]:
        assert {"brier", "log_loss", "roc_auc", "mcc", "ece", "sn34", "reliability"} <= set(metrics)
    assert per_item["filters"]["tfidf_labmom"]["brier"] < per_item["reference"]["brier"]
    assert "reliability.png" in results["outputs"]["reliability"] and (evaluated["out"] / "reliability.png").is_file()
    summary = (evaluated["out"] / "summary.md").read_text()
    assert "## Per-item calibration" in summary and "## Decision modes" in summary and "constant (reference)" in summary


def test_each_decision_mode_is_measured_on_the_same_texts(evaluated):
    results = evaluated["results"]
    modes = results["decisions"]["filters"]["tfidf_labmom"]
    sample = results["filters"]["tfidf_labmom"]
    assert modes["sample"]["deception_reduction"] == pytest.approx(sample["deception_reduction"])
    assert modes["top"]["pass_rate"] == pytest.approx(1 / results["M"], abs=1 / results["counts"]["evaluated"])
    assert modes["threshold"]["deception_reduction"] is not None


def test_the_explain_page_shows_the_reliability_diagram(evaluated):
    assert main(["explain", str(evaluated["out"])]) == 0
    page = (evaluated["out"] / "explain.html").read_text()
    assert 'alt="reliability diagram"' in page and "data:image/png;base64," in page


def test_threshold_passes_the_target_rate_on_the_stream(evaluated, tmp_path, capsys):
    per_text = pd.read_csv(evaluated["out"] / "per_text.csv", keep_default_na=False)
    source = tmp_path / "stream.csv"
    per_text[["text"]].to_csv(source, index=False)
    saved = Filter.load(evaluated["out"] / "filter")
    assert saved.thresholds is not None and saved.thresholds.real_heldout is not None
    for mode, extra in (("threshold", []), ("top", ["--window=50"]), ("threshold", ["--rate=0.5"])):
        output = tmp_path / f"{mode}.csv"
        argv = ["filter", f"--filter={evaluated['out'] / 'filter'}", f"--input={source}", f"--output={output}"]
        assert main([*argv, f"--decision={mode}", *extra]) == 0
        passed = pd.read_csv(output)["decision"].astype(str).str.lower().eq("true").mean()
        target = 0.5 if extra == ["--rate=0.5"] else 1 / saved.m
        assert passed == pytest.approx(target, rel=0.05), (mode, extra)
    capsys.readouterr()
    output = tmp_path / "frr.csv"
    argv = ["filter", f"--filter={evaluated['out'] / 'filter'}", f"--input={source}", f"--output={output}"]
    assert main([*argv, "--decision=threshold", "--max_false_rejection=0.1"]) == 0
    spec = files.read_json(evaluated["out"] / "filter" / "filter.json")
    assert len(spec["decision_thresholds"]["stream"]) == len(decisions.QUANTILE_LEVELS)
