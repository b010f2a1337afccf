"""Calibration of a log density ratio on synthetic data where the right answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semcal.filter import ratio_calibration as rc

# A label shift: general p over three labels, real q; real_train a subset, so r = q / p <= M.
GENERAL = np.array([0.5, 0.3, 0.2])
REAL = np.array([0.2, 0.3, 0.5])
M = 4.0  # max q / p = 2.5 <= M


def label_shift_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels drawn from p, each row a member of real_train with probability r(y) / M."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=GENERAL)
    log_ratio = np.log(REAL / GENERAL)[labels]
    is_real = rng.random(n) < np.exp(log_ratio) / M
    return labels, log_ratio, is_real


def test_stream_shift_passes_exactly_one_over_m():
    scores = np.random.default_rng(0).normal(2.0, 1.5, size=5000)  # offset + noise: raw would saturate
    for temperature in (0.3, 1.0, 2.5):
        shift = rc.stream_shift(scores, M, temperature)
        accept = rc.calibrated_accept(scores, M, temperature, shift)
        assert np.mean(accept) == pytest.approx(1 / M, abs=1e-10)
    assert np.mean(rc.calibrated_accept(scores, M)) > 2 / M  # uncalibrated: far above 1/M
    for pass_rate in (0.5 / M, 2 / M, 1.0):  # any other pass rate in (0, 1]
        shift = rc.stream_shift(scores, M, 1.0, pass_rate)
        assert np.mean(rc.calibrated_accept(scores, M, 1.0, shift)) == pytest.approx(pass_rate, abs=1e-10)
    with pytest.raises(ValueError, match="pass rate must be in"):
        rc.stream_shift(scores, M, 1.0, 0.0)


def test_stream_shift_without_clipping_is_the_log_mean_exp():
    scores = np.random.default_rng(1).normal(5.0, 0.01, size=100)  # nothing reaches M after the shift
    shift = rc.stream_shift(scores, M)
    assert shift == pytest.approx(-np.log(np.mean(np.exp(scores))), abs=1e-12)
    assert np.mean(rc.calibrated_accept(scores, M, 1.0, shift)) == pytest.approx(1 / M, abs=1e-12)


def test_a_true_ratio_needs_no_correction():
    labels, log_ratio, _ = label_shift_sample(200_000, seed=2)
    calibration = rc.calibrate_stream(log_ratio + 3.0, M, "fixed")  # an offset of 3 nats is removed
    accept = rc.calibrated_accept(log_ratio + 3.0, M, calibration.temperature, calibration.shift)
    assert calibration.stream_pass_rate == pytest.approx(1 / M)
    np.testing.assert_allclose(accept, np.exp(log_ratio) / M, rtol=0.01)
    filtered = np.bincount(labels, weights=accept) / accept.sum()
    np.testing.assert_allclose(filtered, REAL, atol=0.005)


def test_likelihood_recovers_the_temperature_of_a_shrunken_ratio():
    _, log_ratio, is_real = label_shift_sample(40_000, seed=3)
    _, stream, _ = label_shift_sample(40_000, seed=4)
    calibration = rc.calibrate_stream(0.5 * stream - 1.0, M, "likelihood", 0.5 * log_ratio - 1.0, is_real)
    assert calibration.temperature == pytest.approx(2.0, rel=0.1)
    assert calibration.stream_pass_rate == pytest.approx(1 / M)


def test_moments_recover_the_temperature_from_an_independent_instrument():
    labels, log_ratio, is_real = label_shift_sample(40_000, seed=5)
    _, stream, _ = label_shift_sample(40_000, seed=6)
    noise = np.random.default_rng(7).normal(size=(len(labels), 2))
    instruments = np.column_stack([labels == 2, labels == 0]) + noise  # another view of the label
    calibration = rc.calibrate_stream(0.5 * stream, M, "moments", 0.5 * log_ratio, is_real, instruments)
    assert calibration.temperature == pytest.approx(2.0, rel=0.15)


def test_moments_see_no_shift_where_there_is_none():
    rng = np.random.default_rng(8)
    scores, stream = rng.normal(size=20_000), rng.normal(size=20_000)  # pure noise scores
    is_real = rng.random(20_000) < 1 / M
    instruments = rng.normal(size=20_000)
    calibration = rc.calibrate_stream(stream, M, "moments", scores, is_real, instruments)
    accept = rc.calibrated_accept(stream, M, calibration.temperature, calibration.shift)
    assert calibration.temperature < 0.3  # nearly flat: nothing to correct
    assert np.std(accept) < 0.1


def test_calibration_refuses_what_it_cannot_use():
    with pytest.raises(ValueError, match="criterion"):
        rc.calibrate_stream(np.zeros(3), M, "magic")
    with pytest.raises(ValueError, match="heldout"):
        rc.calibrate_stream(np.zeros(3), M, "likelihood")
    with pytest.raises(ValueError, match="members and non-members"):
        rc.calibrate_stream(np.zeros(3), M, "likelihood", np.zeros(3), np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="instruments"):
        rc.calibrate_stream(np.zeros(3), M, "moments", np.zeros(3), np.array([True, False, False]))
    with pytest.raises(ValueError, match="exceed 1"):
        rc.stream_shift(np.zeros(3), 1.0)


def test_stacked_calibrator_weights_the_informative_feature():
    labels, log_ratio, is_real = label_shift_sample(20_000, seed=9)
    rng = np.random.default_rng(10)
    features = np.column_stack([log_ratio + 0.3 * rng.normal(size=len(labels)), rng.normal(size=len(labels))])
    calibrator = rc.fit_stacked(features, is_real, ["informative", "noise"])
    assert calibrator.weights[0] > 0.5
    assert abs(calibrator.weights[1]) < 0.05
    stacked = rc.stacked_log_ratio(calibrator, features)
    # P(real | x) = prior * r(x): the acceptance passes about 1/M and follows the true ratio.
    assert np.mean(np.exp(stacked + np.log(calibrator.prior))) == pytest.approx(is_real.mean(), rel=0.02)
    assert np.corrcoef(stacked, log_ratio)[0, 1] > 0.9
    assert json.loads(json.dumps(calibrator.to_dict()))["feature_names"] == ["informative", "noise"]


def test_lm_ratio_features_sum_and_length_normalise():
    features = rc.lm_ratio_features([np.array([1.0, 2.0, 3.0]), np.array([-1.0]), np.array([])])
    np.testing.assert_allclose(features["lm_sum"], [6.0, -1.0, 0.0])
    np.testing.assert_allclose(features["lm_mean"], [2.0, -1.0, 0.0])
    np.testing.assert_allclose(features["n_tokens"], [3, 1, 1])


def test_calibration_parameters_are_plain_json():
    calibration = rc.calibrate_stream(np.linspace(-1, 1, 50), M, "fixed", temperature=0.5)
    restored = json.loads(json.dumps(calibration.to_dict()))
    assert restored["temperature"] == 0.5 and restored["criterion"] == "fixed"


def test_likelihood_is_flat_when_membership_is_noise():
    rng = np.random.default_rng(11)
    scores, stream = rng.normal(2.0, 1.0, size=20_000), rng.normal(2.0, 1.0, size=20_000)
    is_real = rng.random(20_000) < 1 / M
    calibration = rc.calibrate_stream(stream, M, "likelihood", scores, is_real)
    assert calibration.temperature == 0.0
    assert calibration.shift_statistic < calibration.shift_threshold
    np.testing.assert_allclose(rc.calibrated_accept(stream, M, 0.0, calibration.shift), 1 / M)


def test_shift_test_detects_a_label_shift_and_not_noise():
    labels, _, is_real = label_shift_sample(5000, seed=12)
    rng = np.random.default_rng(13)
    view = (labels == 2) + rng.normal(size=len(labels))
    statistic, threshold = rc.shift_test(is_real, view)
    assert statistic > 10 * threshold
    statistic, threshold = rc.shift_test(rng.random(5000) < 0.3, np.column_stack([view, rng.normal(size=5000)]))
    assert statistic < threshold
    assert threshold == pytest.approx(9.21, abs=0.01)  # chi-square, 2 degrees of freedom, 1%
