"""The sources of a filter on an obviously shifted synthetic text set (offline, tiny models):
each estimates log p_real / p_general from a marked subset (members vs all) and from two
corpora (pooled), and saves and loads back to the same log-ratios."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semcal.filter import text_features
from semcal.filter.calibration import expected_filtered_distribution, kl_divergence, label_distribution
from semcal.filter.calibrations import CALIBRATIONS
from semcal.filter.filtering import Filter
from semcal.filter.filters import choices, describe
from semcal.filter.fit_data import FitData, Items
from semcal.filter.sources import OTHER_LABELS, SOURCES, LabelPosteriorSource, TfidfSource, fit_source, label_folds

SPORT = ["the team won the match", "a striker scored a goal", "fans cheered the players", "the coach praised defence"]
FOOD = ["she baked fresh bread", "the soup needs more salt", "he fried onions in butter", "a chef sliced the tomatoes"]
# The true ratio over the general texts: sport 0.6 / 0.35 = 1.71, food 0.1 / 0.35 = 0.29.
TRUE_RATIO = {"sport": 0.6 / 0.35, "food": 0.1 / 0.35}


def shifted_texts(n: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Half sport, half food; the real rows are 60% of the sport texts and 10% of the food texts."""
    rng = np.random.default_rng(seed)
    is_sport = rng.random(n) < 0.5
    texts = [
        f"{rng.choice(SPORT if sport else FOOD)} {rng.choice(['today', 'again', 'at noon', 'quickly'])}"
        for sport in is_sport
    ]
    is_real = rng.random(n) < np.where(is_sport, 0.6, 0.1)
    return texts, is_real, is_sport


def subset_data(seed: int = 0, **options) -> tuple[FitData, np.ndarray]:
    """general = 600 texts with their real members marked; the stream = 200 new general texts."""
    texts, is_real, is_sport = shifted_texts(600, seed)
    stream, _, stream_sport = shifted_texts(200, seed + 1)
    heldout = np.random.default_rng(seed + 100).random(600) < 0.25
    labels = np.where(is_sport, 1, 0)
    data = FitData(
        texts,
        is_real,
        heldout,
        Items(stream),
        m=600 / is_real.sum(),
        labels=["food", "sport"],
        label_codes=labels,
        **options,
    )
    return data, stream_sport


def pooled_data(seed: int = 0) -> tuple[FitData, np.ndarray]:
    """The same shift as two corpora: the real corpus is NOT part of the general one."""
    general, _, general_sport = shifted_texts(600, seed)
    candidates, is_real, _ = shifted_texts(1400, seed + 7)
    real = [text for text, member in zip(candidates, is_real, strict=True) if member]
    texts = general + real
    is_real = np.r_[np.zeros(len(general), bool), np.ones(len(real), bool)]
    heldout = np.random.default_rng(seed + 100).random(len(texts)) < 0.25
    stream, _, stream_sport = shifted_texts(200, seed + 1)
    return FitData(texts, is_real, heldout, Items(stream), m=3.0, form="pooled"), stream_sport


@pytest.mark.parametrize("make", [subset_data, pooled_data], ids=["subset", "pooled"])
@pytest.mark.parametrize("name", ["tfidf", "ngram"])
def test_text_sources_separate_a_shifted_set(make, name):
    data, stream_sport = make()
    source = SOURCES[name]()
    heldout = source.fit(data)
    assert heldout.shape == (int(data.heldout.sum()),)
    log_ratio = source.log_ratio(data.stream)
    assert log_ratio[stream_sport].mean() > log_ratio[~stream_sport].mean() + 0.5
    json.dumps(source.params())  # plain floats


@pytest.mark.parametrize("make", [subset_data, pooled_data], ids=["subset", "pooled"])
def test_tfidf_estimates_the_true_ratio_in_both_forms(make):
    """Members vs all and real vs general are one classifier with two formulas: both give the ratio."""
    data, stream_sport = make()
    source = SOURCES["tfidf"]()
    source.fit(data)
    ratio = np.exp(source.log_ratio(data.stream))
    assert np.median(ratio[stream_sport]) == pytest.approx(TRUE_RATIO["sport"], rel=0.2)
    assert np.median(ratio[~stream_sport]) == pytest.approx(TRUE_RATIO["food"], abs=0.15)


def test_label_posterior_recovers_the_label_ratio():
    data, stream_sport = subset_data()
    source = SOURCES["label_posterior"]()
    source.fit(data)
    ratio = np.exp(source.log_ratio(data.stream))
    labels = data.label_codes
    true = {
        name: (labels[data.is_real] == code).mean() / (labels == code).mean() for code, name in enumerate(data.labels)
    }
    np.testing.assert_allclose(ratio[stream_sport], true["sport"], rtol=0.15)
    np.testing.assert_allclose(ratio[~stream_sport], true["food"], rtol=0.3)
    assert source.params()["ratio[sport]"] == pytest.approx(true["sport"])


@pytest.mark.parametrize(
    "name", ["tfidf", "tfidf_mom", "ngram_labmom", "tfidf_labmom", "label_posterior_stream", "joint_labmom"]
)
def test_a_filter_saves_and_loads_to_the_same_acceptance(tmp_path, name):
    data, _ = subset_data()
    described = describe(name)
    fitted = Filter.fit(described.source, described.calibration, data)
    fitted.save(tmp_path / "filter")
    loaded = Filter.load(tmp_path / "filter")
    assert loaded.name == fitted.name == name
    np.testing.assert_allclose(loaded.accept_probs(data.stream), fitted.accept_probs(data.stream), atol=1e-12)
    assert (
        loaded.score(data.stream.texts[:3], top_tokens=2).tokens_up == fitted.score(data.stream.texts[:3], 2).tokens_up
    )


def _accepted_sport_share(data: FitData, accept: np.ndarray, stream_sport: np.ndarray) -> float:
    return float(accept[stream_sport].sum() / accept.sum())


@pytest.mark.parametrize("make", [subset_data, pooled_data], ids=["subset", "pooled"])
def test_joint_source_passes_the_real_label_mix(make):
    """The joint source's beta is fitted so the accepted general rows show the real rows' label mix:
    on a new stream the accepted sport share lands on the real one, at a pass rate of 1/M."""
    data, stream_sport = make()
    if data.label_codes is None:  # two corpora: label them as the subset does (sport = 1)
        is_sport = [any(text.startswith(sentence) for sentence in SPORT) for text in data.texts]
        data.labels, data.label_codes = ["food", "sport"], np.array(is_sport, dtype=np.int64)
    real_share = data.label_codes[data.is_real].mean()
    fitted = Filter.fit("joint", "stream", data)
    accept = fitted.accept_probs(data.stream)
    assert accept.mean() == pytest.approx(1 / data.m, abs=1e-6)
    assert _accepted_sport_share(data, accept, stream_sport) == pytest.approx(real_share, abs=0.05)
    # What beta is fitted for: the held-out general rows, weighted by acceptance, show the real label
    # mix (KL about 1e-5 to 1e-4; the TF-IDF ratio alone, beta's starting point, leaves 6e-4 to 2e-3).
    heldout_log_ratio = fit_source(data, "joint")[1]
    heldout_accept = fitted.accept_of(heldout_log_ratio) * data.heldout_in_general
    mix = expected_filtered_distribution(heldout_accept, data.label_codes[data.heldout], 2)
    assert kl_divergence(mix, label_distribution(data.label_codes[data.is_real], 2)) < 3e-4
    params = fitted.source.params()
    json.dumps(params)
    assert (
        set(params["weights"]) == {"tfidf", "log P(food)", "log P(sport)"}
        and params["ridge"] in SOURCES["joint"].ridges
    )


def test_cross_fitted_rows_are_scored_by_fits_that_did_not_see_them():
    """A real member with words no other row has: the fit that saw it marks it real; its own
    out-of-fold score, from the fits without it, knows nothing of those words."""
    data, _ = subset_data()
    data.texts = list(data.texts)
    members = np.flatnonzero(data.is_real)[:5]
    for i, row in enumerate(members):
        data.texts[row] = f"zebra{i} quartz{i} lantern{i}"
    fold = label_folds(data, 5)
    source, out_of_fold = TfidfSource.cross_fit(data, fold)
    marked = Items([data.texts[row] for row in members])
    assert (source.log_ratio(marked) > out_of_fold[members] + 0.15).all()
    posterior, log_posterior = LabelPosteriorSource.cross_fit(data, fold, 5, 16)
    assert log_posterior.shape == (len(data.texts), 2) and np.isfinite(log_posterior).all()
    np.testing.assert_allclose(np.exp(log_posterior).sum(axis=1), 1.0, atol=1e-9)


def test_label_folds_spread_every_label_and_a_rare_label_gets_no_posterior_column():
    data, stream_sport = subset_data()
    codes = data.label_codes.copy()
    codes[np.flatnonzero(codes == 0)[:3]] = 2  # a third label with 3 rows
    data.labels, data.label_codes = ["food", "sport", "rare"], codes
    fold = label_folds(data, 5)
    np.testing.assert_array_equal(fold, label_folds(data, 5))  # seeded
    assert np.bincount(fold).min() >= len(fold) // 5 - 2  # balanced
    for k in range(5):
        assert set(np.unique(codes[fold != k])) == {0, 1, 2}, "a fit without fold k still sees every label"
    source = SOURCES["joint"]()
    heldout = source.fit(data)
    assert source.posterior.classes == ["food", "sport"]  # 3 rows: fewer than the 5 folds
    assert np.isfinite(heldout).all() and np.isfinite(source.log_ratio(data.stream)).all()


def test_many_labels_keep_the_largest_posterior_columns_and_one_for_the_rest():
    """Past max_labels the joint source keeps the largest labels' columns and one for the rest,
    so a data set with hundreds of labels fits in seconds: 6 labels, at most 3 columns here."""
    data, _ = subset_data()
    rng = np.random.default_rng(3)
    codes = data.label_codes * 3 + rng.choice(3, size=len(data.label_codes), p=[0.6, 0.3, 0.1])
    data.labels, data.label_codes = [f"{t}{i}" for t in ("food", "sport") for i in range(3)], codes
    source = SOURCES["joint"]()
    source.max_labels = 3
    heldout = source.fit(data)
    largest = [data.labels[code] for code in np.argsort(-np.bincount(codes))[:2]]
    assert source.posterior.classes == sorted([*largest, OTHER_LABELS])
    assert len(source.beta) == 4 and np.isfinite(heldout).all()


def test_stream_calibrations_pass_one_in_m_in_both_forms():
    for make in (subset_data, pooled_data):
        data, _ = make()
        for calibration in ("stream", "mom"):
            accept = Filter.fit("tfidf", calibration, data).accept_probs(data.stream)
            assert accept.mean() == pytest.approx(1 / data.m, abs=1e-6), (make.__name__, calibration)


def test_every_pair_has_a_name_and_a_meaning():
    names = choices()
    assert len(names) == len(SOURCES) * len(CALIBRATIONS) + 1  # and the classifier alias
    for name in names:
        described = describe(name)
        assert described.source in SOURCES and described.calibration in CALIBRATIONS
    assert describe("classifier") == describe("classifier") and describe("classifier").source == "tfidf"
    assert describe("clipped").kind == "variant" and describe("tfidf_labmom").kind == "calibrated"
    with pytest.raises(ValueError):
        describe("tfidf_nope")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A randomly initialised 2-layer BERT and a word-level tokenizer over the test vocabulary."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    words = sorted({word for text in SPORT + FOOD + ["today again at noon quickly"] for word in text.split()})
    vocab = {token: index for index, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    BertTokenizerFast(vocab=vocab).save_pretrained(str(folder))
    config = BertConfig(
        vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(str(folder))
    return folder


def test_embeddings_are_unit_mean_pooled_vectors(tiny_bert):
    texts = ["the team won the match", "she baked fresh bread today", "a"]
    embeddings = text_features.embed_texts(texts, tiny_bert, batch_size=2)
    assert embeddings.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    # Batching and length sorting change nothing: each text alone gives the same vector.
    alone = np.vstack([text_features.embed_texts([text], tiny_bert) for text in texts])
    np.testing.assert_allclose(embeddings, alone, atol=1e-5)


def test_embedding_source_separates_a_shifted_set(tiny_bert):
    data, stream_sport = subset_data(embedding_model=str(tiny_bert))
    source = SOURCES["embedding"]()
    source.fit(data)
    log_ratio = source.log_ratio(data.stream)
    assert log_ratio[stream_sport].mean() > log_ratio[~stream_sport].mean() + 0.5
