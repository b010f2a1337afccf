import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from semcal.filter import calibration


def _clipped_reference(diffs, top_p):
    """The definition, one text at a time, with Python's stable sort."""
    order = sorted(range(len(diffs)), key=lambda i: -abs(diffs[i]))
    total = sum(abs(d) for d in diffs)
    if total == 0:
        return 0.0
    kept, cumulative = [], 0.0
    for rank, i in enumerate(order):
        cumulative += abs(diffs[i])
        if rank == 0 or cumulative / total <= top_p + 1e-12:
            kept.append(diffs[i])
    return sum(kept)


# ---- the clipped score -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("diffs", "top_p", "expected"),
    [
        # |d| sorted 3, 2, 1, 0.5 of 6.5: shares 0.46, 0.77, 0.92, 1
        ([3.0, -1.0, 2.0, 0.5], 0.75, 3.0),
        ([3.0, -1.0, 2.0, 0.5], 0.8, 5.0),
        ([3.0, -1.0, 2.0, 0.5], 0.95, 4.0),
        ([3.0, -1.0, 2.0, 0.5], 1.0, 4.5),
        ([3.0, -1.0, 2.0, 0.5], 0.0, 3.0),  # top_p=0 keeps only the first token
        ([0.5, -4.0, 1.0], 0.0, -4.0),  # ... the largest |d|, whatever its sign
        # a share exactly equal to top_p is within it: 3 of 4 equal tokens at 0.75
        ([1.0, 1.0, 1.0, 1.0], 0.75, 3.0),
        ([0.1, 0.2, 0.3, 0.4], 1.0, 1.0),
    ],
)
def test_clipped_score_hand_computed(diffs, top_p, expected):
    assert calibration.clipped_scores([np.array(diffs)], top_p)[0] == pytest.approx(expected)


def test_clipped_score_ties_keep_the_earlier_token():
    # |-2| == |2|: a stable sort keeps the earlier token first, so the sign depends on position
    assert calibration.clipped_scores([np.array([-2.0, 2.0, 1.0])], 0.4)[0] == -2.0
    assert calibration.clipped_scores([np.array([2.0, -2.0, 1.0])], 0.4)[0] == 2.0
    assert calibration.clipped_scores([np.array([1.0, -1.0, 1.0, -1.0])], 0.5)[0] == 0.0
    assert calibration.clipped_scores([np.array([1.0, -1.0, 1.0, -1.0])], 0.74)[0] == 0.0
    assert calibration.clipped_scores([np.array([1.0, -1.0, 1.0, -1.0])], 0.75)[0] == 1.0


def test_clipped_score_all_zero_and_empty_texts_score_zero():
    assert calibration.clipped_scores([np.zeros(5)], 0.75)[0] == 0.0
    assert calibration.clipped_scores([np.zeros(5)], 0.0)[0] == 0.0
    assert list(calibration.clipped_scores([np.array([]), np.zeros(2), np.array([-0.5])], 0.75)) == [0.0, 0.0, -0.5]


def test_clipped_scores_vectorised_matches_the_definition_text_by_text():
    rng = np.random.default_rng(3)
    # varied lengths, rounded values so that ties happen
    texts = [np.round(rng.normal(size=rng.integers(0, 30)), 1) for _ in range(300)]
    for top_p in (0.0, 0.3, 0.75, 1.0):
        expected = [_clipped_reference(list(d), top_p) for d in texts]
        np.testing.assert_allclose(calibration.clipped_scores(texts, top_p), expected, atol=1e-12)


def test_clipped_at_top_p_one_is_the_sum_and_top_p_is_checked():
    rng = np.random.default_rng(0)
    texts = [rng.normal(size=n) for n in (1, 5, 40)]
    np.testing.assert_allclose(calibration.clipped_scores(texts, 1.0), calibration.sum_scores(texts))
    np.testing.assert_allclose(calibration.log_ratio_scores(texts, "sum"), [d.sum() for d in texts])
    with pytest.raises(ValueError, match="top_p"):
        calibration.clipped_scores(texts, 1.5)
    with pytest.raises(ValueError, match="unknown score method"):
        calibration.log_ratio_scores(texts, "mean")


def test_token_differences_are_real_minus_general():
    d = calibration.token_differences(np.array([-1.0, -2.0]), np.array([-3.0, -1.0]))
    assert list(d) == [2.0, -1.0]
    with pytest.raises(ValueError):
        calibration.token_differences(np.array([-1.0]), np.array([-1.0, -2.0]))


# ---- acceptance, M, normalisation -------------------------------------------------------


def test_m_and_acceptance():
    m = calibration.ratio_m(1000, 250)
    assert m == 4.0
    accept = calibration.accept_probs(np.array([0.0, math.log(2), math.log(4), math.log(8), -np.inf, 1e4]), m)
    np.testing.assert_allclose(accept, [0.25, 0.5, 1.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError):
        calibration.ratio_m(10, 0)


def test_heldout_shift_makes_exp_score_average_one():
    heldout = np.array([-3.0, 0.5, 2.0, 700.0, 710.0])  # exp(710) overflows without the shift trick
    shift = calibration.heldout_shift(heldout)
    assert np.mean(np.exp(heldout - shift)) == pytest.approx(1.0)
    small = np.array([math.log(0.5), math.log(1.5), math.log(4.0)])
    assert calibration.heldout_shift(small) == pytest.approx(math.log(2.0))


def test_oracle_accepts_with_the_clipped_label_ratio():
    real, general = np.array([0.5, 0.5, 0.0]), np.array([0.25, 0.5, 0.25])
    accept = calibration.oracle_accept_probs(np.array([0, 1, 2]), real, general, m=2.0)
    np.testing.assert_allclose(accept, [1.0, 0.5, 0.0])
    # a label the general distribution lacks is never accepted (no division by zero)
    accept = calibration.oracle_accept_probs(np.array([1]), np.array([0.5, 0.5]), np.array([1.0, 0.0]), m=1.0)
    assert accept[0] == 0.0


# ---- divergences ------------------------------------------------------------------------


def test_kl_edge_cases():
    assert calibration.kl_divergence(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0
    assert calibration.kl_divergence(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(math.log(2))
    # 0 log 0 = 0: a label absent from both sides contributes nothing
    assert calibration.kl_divergence(np.array([0.0, 1.0]), np.array([0.0, 1.0])) == 0.0
    # a label present in p and absent in q makes KL infinite
    assert calibration.kl_divergence(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == math.inf
    smoothed = calibration.kl_divergence(np.array([0.5, 0.5]), np.array([1.0, 0.0]), epsilon=1e-3)
    assert math.isfinite(smoothed) and smoothed > 1.0
    p, q = np.array([0.7, 0.2, 0.1]), np.array([0.5, 0.25, 0.25])
    assert calibration.kl_divergence(p, q, epsilon=1e-9) == pytest.approx(calibration.kl_divergence(p, q), rel=1e-6)
    rows = calibration.kl_divergence(np.array([[0.5, 0.5], [np.nan, np.nan], [1.0, 0.0]]), np.array([0.5, 0.5]))
    assert rows[0] == 0.0 and np.isnan(rows[1]) and rows[2] == pytest.approx(math.log(2))


def test_total_variation():
    assert calibration.total_variation(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == 1.0
    assert calibration.total_variation(np.array([0.5, 0.3, 0.2]), np.array([0.3, 0.3, 0.4])) == pytest.approx(0.2)


def test_deception_reduction():
    assert calibration.deception_reduction(0.05, 0.2) == pytest.approx(0.75)
    assert np.isnan(calibration.deception_reduction(0.05, 0.0))
    assert np.isnan(calibration.deception_reduction(0.05, math.inf))
    assert calibration.deception_reduction(math.inf, 0.2) == -math.inf


# ---- the Monte Carlo --------------------------------------------------------------------


@pytest.fixture
def synthetic_stream():
    rng = np.random.default_rng(11)
    codes = rng.choice(4, size=3000, p=[0.4, 0.3, 0.2, 0.1])
    accept = rng.beta(2, 5, size=3000)
    real = np.array([0.1, 0.2, 0.3, 0.4])
    return codes, accept, real


def test_monte_carlo_agrees_with_the_exact_expectation(synthetic_stream):
    codes, accept, real = synthetic_stream
    n_runs = 2000
    runs = calibration.monte_carlo({"filter": accept}, codes, real, n_runs, seed=5)["filter"]
    stats = runs.summary()
    # pass rate: mean of a, with the binomial spread of a sum of Bernoulli(a)
    spread = math.sqrt(np.sum(accept * (1 - accept))) / len(accept)
    assert stats["pass_rate_mean"] == pytest.approx(accept.mean(), abs=5 * spread / math.sqrt(n_runs))
    assert stats["pass_rate_std"] == pytest.approx(spread, rel=0.1)
    expected = calibration.expected_filtered_distribution(accept, codes, 4)
    np.testing.assert_allclose(runs.mean_distribution, expected, atol=3e-3)
    expected_kl = calibration.kl_divergence(expected, real)
    # the mean of per-run KLs sits a little above the KL of the expectation (about (K-1) / (2 * kept texts))
    bias = 3 / (2 * accept.sum())
    assert expected_kl - bias <= stats["kl_mean"] <= expected_kl + 2 * bias + 5 * stats["kl_std"] / math.sqrt(n_runs)
    assert stats["n_runs"] == n_runs and stats["empty_runs"] == 0 and stats["kl_infinite_runs"] == 0


def test_monte_carlo_is_seeded_and_independent_of_chunking(synthetic_stream):
    codes, accept, real = synthetic_stream
    a = calibration.monte_carlo({"f": accept}, codes, real, 50, seed=1, chunk_runs=7)["f"]
    b = calibration.monte_carlo({"f": accept}, codes, real, 50, seed=1, chunk_runs=100)["f"]
    c = calibration.monte_carlo({"f": accept}, codes, real, 50, seed=2)["f"]
    np.testing.assert_array_equal(a.kl, b.kl)
    np.testing.assert_array_equal(a.pass_rate, b.pass_rate)
    assert not np.array_equal(a.kl, c.kl)


def test_monte_carlo_matches_a_per_run_pandas_loop(synthetic_stream):
    codes, accept, real = synthetic_stream
    labels = np.array(list("abcd"))[codes]
    vectorised = calibration.monte_carlo({"f": accept}, codes, real, 20, seed=9)["f"]
    rng = np.random.default_rng(9)
    frame = pd.DataFrame({"label": labels, "accept_prob": accept})
    real_series = pd.Series(real, index=list("abcd"))
    for run in range(20):
        filtered = frame[rng.random(len(frame)) < frame["accept_prob"]]
        freqs = filtered["label"].value_counts(normalize=True).reindex(list("abcd"), fill_value=0.0)
        kl = float(np.sum(np.where(freqs > 0, freqs * np.log(freqs / real_series), 0.0)))
        assert vectorised.kl[run] == pytest.approx(kl, rel=1e-9)
        assert vectorised.tvd[run] == pytest.approx(0.5 * np.abs(freqs - real_series).sum(), rel=1e-9)
        assert vectorised.pass_rate[run] == len(filtered) / len(frame)


def test_monte_carlo_shares_draws_between_filters_and_reports_empty_runs(synthetic_stream):
    codes, accept, real = synthetic_stream
    runs = calibration.monte_carlo(
        {"all": np.ones(len(codes)), "none": np.zeros(len(codes)), "half": accept, "half_again": accept.copy()},
        codes,
        real,
        30,
        seed=0,
    )
    everything = runs["all"].summary()
    assert everything["pass_rate_mean"] == 1.0 and everything["pass_rate_std"] == 0.0
    assert everything["kl_mean"] == pytest.approx(calibration.kl_divergence(np.bincount(codes) / len(codes), real))
    nothing = runs["none"].summary()
    assert nothing["empty_runs"] == 30 and nothing["kl_mean"] != nothing["kl_mean"]  # NaN: no filtered set
    np.testing.assert_array_equal(runs["half"].kl, runs["half_again"].kl)  # the same draws


def test_infinite_kl_runs_are_counted_and_epsilon_removes_them():
    codes = np.array([0, 1, 2] * 100)
    real = np.array([0.5, 0.5, 0.0])  # label 2 never occurs in real
    runs = calibration.monte_carlo({"f": np.full(300, 0.5)}, codes, real, 20, seed=0)["f"].summary()
    assert runs["kl_mean"] == math.inf and runs["kl_infinite_runs"] == 20
    assert runs["kl_std"] != runs["kl_std"]  # undefined, not a number
    smoothed = calibration.monte_carlo({"f": np.full(300, 0.5)}, codes, real, 20, seed=0, epsilon=1e-4)["f"]
    assert math.isfinite(smoothed.summary()["kl_mean"]) and smoothed.summary()["kl_infinite_runs"] == 0


def test_oracle_filter_reaches_near_zero_kl():
    rng = np.random.default_rng(4)
    n_labels = 6
    general_p = np.array([0.3, 0.25, 0.2, 0.12, 0.08, 0.05])
    general_train = rng.choice(n_labels, size=20000, p=general_p)
    # real_train: a label-tilted subset of general_train, as distort makes it
    keep = rng.random(general_train.size) < np.array([0.05, 0.1, 0.2, 0.4, 0.6, 0.9])[general_train]
    real_train = general_train[keep]
    general_test = rng.choice(n_labels, size=5000, p=general_p)
    real = calibration.label_distribution(real_train, n_labels)
    general = calibration.label_distribution(general_train, n_labels)
    m = calibration.ratio_m(general_train.size, real_train.size)
    accept = calibration.oracle_accept_probs(general_test, real, general, m)
    kl_general = calibration.kl_divergence(calibration.label_distribution(general_test, n_labels), real)
    expected_kl = calibration.kl_divergence(calibration.expected_filtered_distribution(accept, general_test, 6), real)
    runs = calibration.monte_carlo({"oracle": accept}, general_test, real, 300, seed=0)["oracle"].summary()
    assert kl_general > 0.3
    assert expected_kl < 2e-3
    assert runs["kl_mean"] < 0.02 * kl_general
    assert calibration.deception_reduction(runs["kl_mean"], kl_general) > 0.97


def test_membership_logistic_recovers_a_known_intercept_and_slope():
    rng = np.random.default_rng(0)
    scores = rng.normal(0.0, 2.0, size=20000)
    is_real = rng.random(20000) < expit(-1.5 + 0.7 * scores)
    intercept, slope = calibration.fit_membership_logistic(scores, is_real)
    assert intercept == pytest.approx(-1.5, abs=0.08) and slope == pytest.approx(0.7, abs=0.05)
    m = 4.0
    log_ratio = calibration.logistic_log_ratio(scores, intercept, slope, m)
    # acceptance min(1, exp(log_ratio) / M) is the fitted membership probability itself
    np.testing.assert_allclose(calibration.accept_probs(log_ratio, m), expit(intercept + slope * scores))
    with pytest.raises(ValueError, match="both real_train members and non-members"):
        calibration.fit_membership_logistic(scores, np.zeros_like(scores, dtype=bool))


def test_matched_scale_makes_reweighted_general_texts_match_the_real_mean():
    rng = np.random.default_rng(1)
    scores = rng.normal(0.0, 1.0, size=5000)
    # members are drawn with probability rising in the score, so they score higher on average
    is_real = rng.random(5000) < expit(scores - 1.0)
    scale = calibration.fit_matched_scale(scores, is_real)
    weights = np.exp(scale * scores)
    assert 0 < scale < 20
    assert np.sum(weights * scores) / np.sum(weights) == pytest.approx(scores[is_real].mean(), abs=1e-6)
    # no signal: members score lower than the rest
    assert calibration.fit_matched_scale(scores, scores < -1.0) == 0.0
