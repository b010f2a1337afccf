"""Adaptive filtering of a drifting stream and drift alarms (semcal.stream.adapt, semcal filter --adapt)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semcal.cli.cli import main
from semcal.core.errors import UserError
from semcal.filter.calibration import accept_probs, kl_divergence
from semcal.filter.filtering import Filter
from semcal.filter.fit_data import FitData, Items
from semcal.filter.label_shift import (
    block_pass_rate,
    em_prior,
    feasible_pass_rate,
    log_prior_correction,
    match_label_mix,
    rate_offset,
    shifted_posterior,
)
from semcal.protocol.demo_data import generate_demo_rows
from semcal.protocol.distort_plan import label_scores, plan_tilt
from semcal.store import files
from semcal.store.data import heldout_mask
from semcal.stream.adapt import Adapter, AdaptSettings
from semcal.stream.filter_stream import FilterConfig, filter_texts

WINDOW = 500


def _codes(labels: list[str], names: list[str]) -> np.ndarray:
    return np.array([names.index(label) for label in labels])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """tfidf_labmom on the demo's general_train with a tilt real split (KL 0.6), saved and loaded."""
    train, train_labels = generate_demo_rows(2000, 0)
    test, test_labels = generate_demo_rows(1000, 1)
    names = sorted(set(train_labels))
    codes, test_codes = _codes(train_labels, names), _codes(test_labels, names)
    counts = plan_tilt(np.bincount(codes, minlength=len(names)), 0.6, label_scores(len(names), 0))
    rng = np.random.default_rng(0)
    real = np.concatenate([rng.choice(np.flatnonzero(codes == y), c, replace=False) for y, c in enumerate(counts)])
    n = len(train)
    data = FitData(
        train,
        np.isin(np.arange(n), real),
        heldout_mask(np.arange(n), n, 0.2, 42),
        Items(test),
        m=n / len(real),
        labels=names,
        label_codes=codes,
    )
    folder = tmp_path_factory.mktemp("adapt") / "filter"
    Filter.fit("tfidf", "labmom", data).save(folder)
    q = np.bincount(codes[real], minlength=len(names)) / len(real)
    p = np.bincount(test_codes, minlength=len(names)) / len(test_codes)
    return {"folder": folder, "test": test, "codes": test_codes, "q": q, "p": p, "trusted": [train[i] for i in real]}


def _stream(demo, mixes: list[np.ndarray], per_mix: int, seed: int = 1) -> np.ndarray:
    """Rows of general_test: per_mix items from each label mix in turn (with replacement)."""
    rng = np.random.default_rng(seed)
    pools = [np.flatnonzero(demo["codes"] == y) for y in range(len(demo["p"]))]
    labels = np.concatenate([rng.choice(len(mix), size=per_mix, p=mix) for mix in mixes])
    return np.array([pools[y][rng.integers(len(pools[y]))] for y in labels])


def _flood(demo) -> np.ndarray:
    """A tilt of the test mix at KL 0.8: an adversary floods other categories."""
    counts = plan_tilt(np.round(demo["p"] * 1e6).astype(np.int64), 0.8, label_scores(len(demo["p"]), 11))
    return counts / counts.sum()


def _run(demo, rows: np.ndarray, mode: str, alarm: str = "none", batch: int = 250, **settings):
    adapter = Adapter(Filter.load(demo["folder"]), mode, alarm, AdaptSettings(**settings), trusted=demo["trusted"])
    texts = [demo["test"][i] for i in rows]
    accept, alarms = [], []
    for start in range(0, len(texts), batch):
        accept.append(adapter.score(texts[start : start + batch]).accept)
        alarms += adapter.pop_alarms()
    return np.concatenate(accept), alarms, adapter


def _reductions(demo, rows: np.ndarray, accept: np.ndarray) -> np.ndarray:
    """Per window: 1 - KL(expected accepted mix || real) / KL(window mix || real)."""
    k, out = len(demo["q"]), []
    for start in range(0, len(rows), WINDOW):
        labels, weights = demo["codes"][rows[start : start + WINDOW]], accept[start : start + WINDOW]
        window = np.bincount(labels, minlength=k) / len(labels)
        accepted = np.bincount(labels, weights=weights, minlength=k) / weights.sum()
        out.append(1 - kl_divergence(accepted, demo["q"], 1e-6) / kl_divergence(window, demo["q"], 1e-6))
    return np.array(out)


def test_em_recovers_a_known_label_prior():
    # Three labels with Gaussian features: the exact posterior under p, items drawn under p'.
    rng = np.random.default_rng(0)
    p, shifted, means = np.array([0.5, 0.3, 0.2]), np.array([0.1, 0.3, 0.6]), np.array([-2.0, 0.0, 2.0])
    labels = rng.choice(3, size=4000, p=shifted)
    x = rng.normal(means[labels], 1.0)
    likelihood = np.exp(-0.5 * (x[:, None] - means[None, :]) ** 2) * p
    posterior = likelihood / likelihood.sum(axis=1, keepdims=True)
    assert np.abs(em_prior(posterior, p) - shifted).max() < 0.03
    # A batch of windows at once gives each window's own estimate.
    stacked = em_prior(np.stack([posterior[:2000], posterior[2000:]]), p)
    assert stacked.shape == (2, 3) and np.abs(stacked - shifted).max() < 0.04


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    labels=st.integers(2, 8),
    concentration=st.sampled_from([0.05, 0.5, 5.0]),  # sharp, soft, nearly flat posteriors
    pseudo_count=st.sampled_from([0.0, 1.0, 50.0]),
)
def test_accelerated_em_lands_on_the_em_fixed_point(seed, labels, concentration, pseudo_count):
    # The accelerated EM must return the maximum-likelihood prior: a fixed point of one plain EM
    # step, on the simplex, for stacked windows and a single one, also when a label nearly vanishes.
    rng = np.random.default_rng(seed)
    reference = rng.dirichlet(np.ones(labels))
    posterior = rng.dirichlet(np.full(labels, concentration), size=(3, 200))
    posterior[1] *= np.eye(labels)[0] * 0.999 + 0.001  # a window that holds almost only label 0
    posterior /= posterior.sum(axis=-1, keepdims=True)
    prior = em_prior(posterior, reference, pseudo_count)
    assert prior.shape == (3, labels) and np.all(prior >= 0) and np.allclose(prior.sum(axis=-1), 1.0)
    # One plain EM step (the E-step is shifted_posterior, the M-step its mean with the pseudo-count).
    step = (shifted_posterior(posterior, prior[:, None, :], reference).sum(axis=1) + pseudo_count * reference) / (
        200 + pseudo_count
    )
    assert np.abs(step - prior).max() < 1e-5
    assert np.allclose(em_prior(posterior[2], reference, pseudo_count), prior[2], atol=1e-6)


def test_matching_the_label_mix_recovers_where_the_prior_correction_alone_is_too_weak():
    # Three overlapping Gaussian labels: a soft posterior, as captions that mention two sources give.
    rng = np.random.default_rng(0)
    means, m = np.array([-1.0, 0.0, 1.0]), 6.0
    p, q, drifted = np.array([0.4, 0.35, 0.25]), np.array([0.2, 0.3, 0.5]), np.array([0.7, 0.2, 0.1])

    def draw(prior: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        labels = rng.choice(3, size=5000, p=prior)
        likelihood = np.exp(-0.5 * (rng.normal(means[labels], 1.0)[:, None] - means) ** 2) * p
        posterior = likelihood / likelihood.sum(axis=1, keepdims=True)
        return labels, posterior, np.log(posterior @ (q / p))  # the exact log q(x) / p(x) of the fitted stream

    def kl_accepted(scores: np.ndarray, labels: np.ndarray, offset: float) -> float:
        accept = accept_probs(scores + offset, m)
        return kl_divergence(np.bincount(labels, weights=accept, minlength=3) / accept.sum(), q)

    _, reference, reference_scores = draw(p)
    labels, posterior, scores = draw(drifted)
    corrected = scores - log_prior_correction(posterior, drifted, p)
    prior_only = kl_accepted(corrected, labels, rate_offset(corrected, m))
    log_z = log_prior_correction(reference, drifted, p)
    weights, offset = match_label_mix(
        reference_scores - log_z, shifted_posterior(reference, drifted, p), q, m, 1e-3, np.zeros(3), np.exp(log_z)
    )
    matched = corrected + np.log(shifted_posterior(posterior, drifted, p)) @ weights
    assert prior_only > 0.15  # Z(x) moves each item by its labels' mean ratio: the flooded label leaks through
    assert kl_accepted(matched, labels, offset) < 0.2 * prior_only
    assert abs(accept_probs(matched + offset, m).mean() * m - 1) < 0.15  # the rest is the block controller's


def test_the_block_pass_rate_asks_the_rest_of_a_block_for_what_it_still_needs():
    assert block_pass_rate(0.1, 500, 0, 0.0) == pytest.approx(0.1)
    assert block_pass_rate(0.1, 500, 250, 20.0) == pytest.approx(30 / 250)  # 50 passes due, 20 given
    assert block_pass_rate(0.1, 500, 450, 0.0) == pytest.approx(0.2)  # at most twice the rate
    assert block_pass_rate(0.1, 500, 450, 60.0) == pytest.approx(0.05)  # at least half of it


def test_the_pass_rate_falls_only_where_the_stream_lacks_a_label_the_mix_needs():
    target, m = np.array([0.5, 0.3, 0.2]), 4.0
    assert feasible_pass_rate(target, np.array([0.3, 0.3, 0.4]), m) == pytest.approx(1 / m)  # every t/M <= p'
    # The first label makes up 5% of the stream where 0.5 / 4 = 12.5% would be needed: it passes whole, and
    # the rate falls to where that is its share 0.5 of the accepted items.
    assert feasible_pass_rate(target, np.array([0.05, 0.55, 0.4]), m) == pytest.approx(0.05 / 0.5)
    # Passing 0.05 + 0.075 + 0.05 (the first label whole, the others at t / M) would give a mix of 0.29 / 0.43 / 0.29.


def test_a_synthetic_drift_defeats_the_frozen_filter_and_prior_recovers(demo):
    rows = _stream(demo, [demo["p"], _flood(demo)], 2000)
    undrifted = _reductions(demo, rows[:2000], _run(demo, rows[:2000], "none")[0]).mean()
    after = {mode: _reductions(demo, rows, _run(demo, rows, mode)[0])[4:].mean() for mode in ("none", "prior")}
    assert after["none"] < 0.8 * undrifted  # the frozen filter lets the flood through
    assert after["prior"] >= 0.8 * undrifted  # the EM prior puts the accepted mix back


def test_rate_keeps_the_pass_rate_on_target_where_the_frozen_filter_does_not(demo):
    # The label the trusted texts favour most floods the stream: the frozen filter passes far more than 1/M.
    favoured = np.eye(len(demo["p"]))[np.argmax(demo["q"] / demo["p"])]
    rows = _stream(demo, [demo["p"], 0.5 * demo["p"] + 0.5 * favoured], 3000)
    target = 1 / Filter.load(demo["folder"]).m
    off = {}
    for mode in ("none", "rate"):
        pass_rates = _run(demo, rows, mode)[0].reshape(-1, WINDOW).mean(axis=1)
        off[mode] = np.abs(pass_rates / target - 1)
    assert off["none"].max() > 0.2
    assert off["rate"][1:].max() < 0.1  # every window, the one the switch falls in too


def test_decisions_do_not_depend_on_the_batch_size(demo):
    rows = _stream(demo, [demo["p"], _flood(demo)], 400)
    for mode in ("prior", "rate"):
        one, _, _ = _run(demo, rows, mode, "auto", batch=7)
        other, _, _ = _run(demo, rows, mode, "auto", batch=333)
        np.testing.assert_allclose(one, other, rtol=0, atol=1e-12)


def test_alarms_fire_after_a_switch_and_stay_quiet_on_the_undrifted_stream(demo):
    quiet = _stream(demo, [demo["p"]], 5000, seed=7)
    assert len(_run(demo, quiet, "none", "auto")[1]) <= 1  # 10 windows at a 1% rate: 2 or more has p 0.4%
    rows = _stream(demo, [demo["p"], _flood(demo)], 2000)
    alarms = _run(demo, rows, "none", "auto")[1]
    assert alarms and 5 <= alarms[0].window <= 6  # within two windows of the switch after window 4
    assert alarms[0].statistic == "label_prior_kl" and alarms[0].value > alarms[0].threshold
    assert "window 5 (texts 2001-2500)" in alarms[0].message()


def test_semcal_filter_adapts_and_writes_alarm_records(demo, tmp_path):
    rows = _stream(demo, [demo["p"], _flood(demo)], 1000)
    source = tmp_path / "stream.jsonl"
    source.write_text("".join(json.dumps({"text": demo["test"][i]}) + "\n" for i in rows))
    output = tmp_path / "decisions.jsonl"
    config = FilterConfig(filter=str(demo["folder"]), input=str(source), output=str(output), batch_size=64)
    config.adapt, config.alarm, config.adapt_settings = "prior", "auto", {"alarm_window": "250"}
    counts = filter_texts(config)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    alarms = [record for record in records if "alarm" in record]
    assert counts["items"] == 2000 and len(records) == 2000 + len(alarms)
    assert alarms and alarms[0]["statistic"] == "label_prior_kl" and alarms[0]["window"] in (5, 6)
    # the same items, the adapted acceptances of the Python object
    accept = np.array([record["accept_prob"] for record in records if "alarm" not in record])
    np.testing.assert_allclose(accept, _run(demo, rows, "prior", alarm_window=250, batch=64)[0], atol=1e-9)


def test_bad_adapt_settings_are_refused_before_an_earlier_output_is_touched(demo, tmp_path):
    source = tmp_path / "stream.jsonl"
    source.write_text("".join(json.dumps({"text": text}) + "\n" for text in demo["test"][:50]))
    output = tmp_path / "decisions.jsonl"
    output.write_text("an earlier run's decisions\n")
    cases = {
        "window": ("510", "window \\(510\\) must be a multiple of update_every \\(25\\)"),
        "match_ridge": ("-1", "match_ridge must be at least 0"),
        "prior_pseudo_count": ("-5", "prior_pseudo_count must be at least 0"),
    }
    for name, (value, message) in cases.items():
        config = FilterConfig(filter=str(demo["folder"]), input=str(source), output=str(output))
        config.adapt, config.adapt_settings = "prior", {name: value}
        with pytest.raises(UserError, match=message):
            filter_texts(config)
    assert output.read_text() == "an earlier run's decisions\n"


def test_prior_needs_a_label_posterior_and_old_filters_still_load(demo, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(demo["folder"], old)
    spec = files.read_json(old / "filter.json")
    del spec["drift"]
    files.write_json(old / "filter.json", spec)
    shutil.rmtree(old / "drift")
    model = Filter.load(old)
    assert model.drift is None and model.label_posterior is None
    with pytest.raises(
        UserError, match="adapt=prior re-weights the filter by label and needs a label posterior.*adapt=rate"
    ):
        Adapter(model, "prior")
    with pytest.raises(UserError, match="alarm=auto compares the stream"):
        Adapter(model, "none", "auto")
    Adapter(model, "rate").score(demo["test"][:60])  # rate needs nothing but the filter
    with pytest.raises(UserError, match="adapt=refit refits a TF-IDF source on the trusted texts"):
        Adapter(model, "refit")


def test_a_damaged_drift_reference_is_refused(demo, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(demo["folder"], damaged)
    files.write_safetensors(damaged / "drift" / "reference.safetensors", {"log_ratio": np.zeros(3)})
    with pytest.raises(UserError, match="reference.safetensors"):
        Filter.load(damaged)


def test_refit_refits_on_the_trusted_texts_every_period(demo):
    rows = _stream(demo, [demo["p"], _flood(demo)], 600)
    accept, _, adapter = _run(demo, rows, "refit", refit_every=400, refit_window=400, max_trusted=300)
    assert adapter.refits == 3 and np.all((accept >= 0) & (accept <= 1))


def test_a_filter_fitted_without_labels_runs_rate_and_alarms_and_refuses_prior(tmp_path, capsys):
    """semcal fit without --label_column keeps log-ratios only: rate and the alarms need nothing more."""
    texts, labels = generate_demo_rows(1200, 0)
    pd.DataFrame({"text": [t for t, y in zip(texts, labels, strict=True) if y in ("animals", "weather")]}).to_csv(
        tmp_path / "real.csv", index=False
    )
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "general.csv", index=False)
    pd.DataFrame({"text": generate_demo_rows(600, 1)[0]}).to_csv(tmp_path / "new.csv", index=False)
    filter_folder = tmp_path / "filter"
    assert (
        main(
            [
                "fit",
                f"--real={tmp_path / 'real.csv'}",
                f"--general={tmp_path / 'general.csv'}",
                f"--output={filter_folder}",
            ]
        )
        == 0
    )
    assert Filter.load(filter_folder).drift.stream_prior is None  # label-free
    common = ["filter", f"--filter={filter_folder}", f"--input={tmp_path / 'new.csv'}"]
    output = tmp_path / "out.jsonl"
    settings = "--adapt_settings=alarm_window=100,window=100"
    assert main([*common, f"--output={output}", "--adapt=rate", "--alarm=auto", settings]) == 0
    records = [json.loads(line) for line in output.read_text().splitlines() if "alarm" not in line]
    assert len(records) == 600 and all(0 <= record["accept_prob"] <= 1 for record in records)
    for alarm in ("auto", "mean_log_ratio"):
        assert main([*common, f"--output={output}", f"--alarm={alarm}"]) == 0
    capsys.readouterr()
    assert main([*common, f"--output={tmp_path / 'prior.jsonl'}", "--adapt=prior"]) != 0
    err = capsys.readouterr().err
    assert (
        "Traceback" not in err
        and "adapt=prior re-weights the filter by label" in err
        and "fitted without labels" in err
    )
    assert not (tmp_path / "prior.jsonl").exists()


def test_no_restart_on_an_undrifted_stream_and_a_flood_lowers_the_pass_rate(demo, caplog):
    # 6,000 items of the fitted mix: 240 checks for a change, none confirmed by the alarm's statistic.
    quiet = _stream(demo, [demo["p"]], 6000, seed=5)
    for mode in ("prior", "rate"):
        assert _run(demo, quiet, mode)[2].restarts == 0
    # A flood of the label the trusted texts hold least: prior lets less of it through than the frozen
    # filter, its target pass rate falls (a log line naming the texts it was decided on).
    flooded = 0.3 * demo["p"] + 0.7 * np.eye(len(demo["p"]))[np.argmin(demo["q"] / demo["p"])]
    rows = _stream(demo, [demo["p"], flooded], 2000)
    late = demo["codes"][rows[2000:]]
    kl = {}
    with caplog.at_level("INFO", logger="semcal.stream.adapt"):
        for mode in ("none", "prior"):
            accept, _, adapter = _run(demo, rows, mode)
            mix = np.bincount(late, weights=accept[2000:], minlength=len(demo["q"])) / accept[2000:].sum()
            kl[mode] = kl_divergence(mix, demo["q"], 1e-6)
    assert kl["prior"] < 0.5 * kl["none"]
    assert adapter.rate < 0.8 / Filter.load(demo["folder"]).m
    # The switch is a change the alarm's statistic confirms: the estimates restart, in a log line.
    assert adapter.restarts >= 1
    assert any("differ from the" in line and "estimates restart from them" in line for line in caplog.messages)
    assert any("adapt=prior: target pass rate" in line and "decided on texts" in line for line in caplog.messages)
