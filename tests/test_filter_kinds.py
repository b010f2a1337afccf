"""Every kind of calibrated filter is saved by the evaluation and, loaded back, accepts the
evaluated general_test texts as the evaluation did (semcal.filter.filtering.Filter): the n-gram and
embedding filters on the synthetic evaluation, the control and stacked filters on three
tiny language models (offline, small data, tiny models)."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest

from semcal.core.errors import UserError
from semcal.filter.filtering import Filter
from semcal.lm.scoring import ScoreConfig, score_split
from semcal.protocol.evaluation import EvaluationConfig, evaluate
from semcal.store import files
from semcal.store.data import load_dataset_dict
from tests.lm_fixtures import tiny_model_folder, write_demo_dataset
from tests.test_calibrated_filters import _config, tiny_encoder  # noqa: F401 (a fixture)
from tests.test_evaluation import _build_dataset

SAVED_FILES = {
    "ngram_labmom": ["filter.json", "ngram.safetensors"],
    "embedding_labmom": ["embedding.safetensors", "filter.json"],
    "control_sum": ["filter.json"],
    "control_sum_stream": ["filter.json"],
    "control_sum_labmom": ["filter.json"],
    "stack_labmom": ["filter.json", "tfidf.safetensors", "tfidf_vocabulary.json"],
    "tfidf_labmom": ["filter.json", "label_posterior.safetensors", "label_vocabulary.json"],
}


def _check_saved(out, kind: str) -> tuple[Filter, pd.DataFrame]:
    """The filter folder holds JSON and safetensors only, and accepts and scores per_text.csv's
    general_test texts as the evaluation did (to 1e-6)."""
    folder = out / "filter"
    assert sorted(path.name for path in folder.iterdir() if path.name != "drift") == SAVED_FILES[kind]
    # drift/: the reference and label posterior semcal.stream.adapt reads, JSON and safetensors too
    assert all(path.suffix in (".json", ".safetensors") for path in (folder / "drift").glob("*"))
    per_text = pd.read_csv(out / "per_text.csv", keep_default_na=False)
    model = Filter.load(folder)
    scored = model.score(per_text["text"].tolist(), top_tokens=3)
    assert model.name == kind and np.std(per_text["accept_prob"]) > 1e-3, "a flat filter would pass trivially"
    np.testing.assert_allclose(scored.accept, per_text["accept_prob"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(scored.scores, per_text["score"], rtol=0, atol=1e-6)
    return model, per_text


# ---- text estimators on the synthetic evaluation ---------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("filter_kinds_text")
    return root, _build_dataset(root / "data")


def _evaluate_text_kind(synthetic, kind: str, **changes):
    root, splits = synthetic
    out = root / kind
    config = _config(root, splits, filter=kind, candidates=False, classifier=False, n_runs=20, output_dir=str(out))
    evaluate(dataclasses.replace(config, **changes))
    return out


def test_the_saved_ngram_filter_accepts_as_the_evaluation_did(synthetic):
    out = _evaluate_text_kind(synthetic, "ngram_labmom")
    model, per_text = _check_saved(out, "ngram_labmom")
    spec = files.read_json(out / "filter" / "filter.json")
    state = spec["source_state"]
    assert spec["source"] == "ngram" and model.source.vectorizer.n_features == 2**16 and "models" not in state
    assert files.read_safetensors(out / "filter" / "ngram.safetensors")["bucket_log_ratio"].shape == (2**16,)
    # the n-grams that pushed each score are the text's own
    up = model.score(per_text["text"].tolist()[:20], top_tokens=2).tokens_up
    assert any(up) and all(item.split("'")[1] in text for item, text in zip(up, per_text["text"], strict=False) if item)


def test_without_a_shift_the_default_is_the_label_plug_in_and_saved_as_such(synthetic):
    """baseline: real_train is a uniform sample, the held-out labels show no shift. The default
    does not go flat (which keeps general_test's label mix): it takes the label-posterior plug-in,
    which moves the accepted mix toward real_train's own, and the saved filter does the same."""
    root, splits = synthetic
    out = _evaluate_text_kind(synthetic, "tfidf_labmom", distortion="baseline")
    results = files.read_json(out / "results.json")
    chosen = results["filters"]["tfidf_labmom"]
    assert chosen["log_ratio"] == "label_posterior"
    assert chosen["no_shift_in"]["log_ratio"] == "tfidf"
    assert (
        chosen["no_shift_in"]["calibration"]["shift_statistic"]
        <= chosen["no_shift_in"]["calibration"]["shift_threshold"]
    )
    assert chosen["pass_rate_mean"] == pytest.approx(results["ideal_pass_rate"], abs=0.02)
    model, per_text = _check_saved(out, "tfidf_labmom")
    scored = model.score(per_text["text"].tolist()[:5], top_tokens=3)
    assert all(up or down for up, down in zip(scored.tokens_up, scored.tokens_down, strict=True)), "n-grams explain it"
    # Accepted label mix (expected, from accept_prob) is closer to real_train's than general_test's is.
    real = pd.Series(splits["real_train_baseline"]["label"]).value_counts(normalize=True)
    kept = per_text.groupby("label")["accept_prob"].sum()
    kept, general = kept / kept.sum(), per_text["label"].value_counts(normalize=True)
    assert (kept - real).abs().sum() < (general - real).abs().sum()


def test_the_saved_embedding_filter_accepts_as_the_evaluation_did(synthetic, tiny_encoder, tmp_path):  # noqa: F811
    out = _evaluate_text_kind(synthetic, "embedding_labmom", embedding_model=str(tiny_encoder))
    model, _ = _check_saved(out, "embedding_labmom")
    encoder = files.read_json(out / "filter" / "filter.json")["source_state"]["encoder"]
    # Recorded relative to the filter folder, so a moved run still finds it.
    assert (out / "filter" / encoder["path"]).resolve() == tiny_encoder.resolve() and encoder["weights_fingerprint"]
    assert encoder["tokenizer_fingerprint"] and model.source.params()["dimensions"] == 32
    folder = shutil.copytree(out / "filter", tmp_path / "filter")
    spec = files.read_json(folder / "filter.json")
    spec["source_state"]["encoder"]["weights_fingerprint"] = "0" * 16
    files.write_json(folder / "filter.json", spec)
    with pytest.raises(UserError, match="sentence-encoder in .* changed since the filter was fitted"):
        Filter.load(folder)


# ---- the control and stacked filters on three tiny language models --------------------------------


@pytest.fixture(scope="module")
def three_models(tmp_path_factory):
    """General, real and control models score general_test and the held-out general_train rows."""
    root = tmp_path_factory.mktemp("filter_kinds_lm")
    # 100 held-out rows: enough for the label moments to see the real split's shift
    data = write_demo_dataset(root / "data", n_train=500, n_test=40)
    texts = load_dataset_dict(str(data))["general_train"]["text"]
    scores = {}
    for role, seed in (("general", 0), ("real", 1), ("control", 2)):
        model = tiny_model_folder(root / "models" / role, texts, seed=seed)
        for split, heldout in (("general_test", False), ("general_train", True)):
            output = root / "scores" / f"{split}.{role}"
            config = ScoreConfig(
                dataset_name=str(data), split_name=split, heldout_only=heldout, model=str(model), output_dir=str(output)
            )
            scores[role, heldout] = str(score_split(config))
    config = EvaluationConfig(
        dataset_name=str(data),
        distortion="animals",
        general_scores_csv=scores["general", False],
        real_scores_csv=scores["real", False],
        general_heldout_csv=scores["general", True],
        real_heldout_csv=scores["real", True],
        control_scores_csv=scores["control", False],
        control_heldout_csv=scores["control", True],
        candidates=False,
        classifier=False,
        n_runs=20,
    )
    return root, config


@pytest.mark.parametrize("kind", ["control_sum", "control_sum_stream", "control_sum_labmom", "stack_labmom"])
def test_the_saved_control_and_stacked_filters_accept_as_the_evaluation_did(three_models, kind):
    root, config = three_models
    out = root / "out" / kind
    evaluate(dataclasses.replace(config, filter=kind, output_dir=str(out)))
    model, _ = _check_saved(out, kind)
    roles = {"real", "control"} if kind.startswith("control") else {"general", "real"}
    state = files.read_json(out / "filter" / "filter.json")["source_state"]
    models = state["sum"]["models"] if kind == "stack_labmom" else state["models"]
    assert set(models) == roles
    assert all(saved["weights_fingerprint"] and saved["tokenizer_fingerprint"] for saved in models.values())
    assert set(model.source.loaded if kind != "stack_labmom" else model.source.language_model.loaded) == roles
    if kind == "stack_labmom":
        assert state["stacked"]["feature_names"] == ["lm_sum", "lm_mean", "n_tokens", "tfidf"]
