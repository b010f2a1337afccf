"""`semcal fit` on real captions: a filter from a trusted corpus and an unlabeled stream
sample, applied with `semcal filter` (offline; AudioCaps and AG News from ../shared/data)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from semcal.cli.cli import main
from semcal.core.errors import UserError
from semcal.filter.filtering import Filter
from semcal.filter.fit_data import Items
from semcal.fit.fit import FitConfig, fit
from semcal.store import files

TRUSTED_CATEGORIES = ["Animal", "Natural sounds"]


@pytest.fixture(scope="module")
def audiocaps_fit(shared_data, tmp_path_factory):
    """real: train captions of two categories; stream: every train caption; neither file has labels."""
    root = tmp_path_factory.mktemp("fit_audiocaps")
    table = pd.read_csv(shared_data / "audiocaps_labeled" / "audiocaps_labeled.csv")
    train, test = table[table["split"] == "train"], table[table["split"] == "test"]
    trusted = train[train["top_category"].isin(TRUSTED_CATEGORIES)]
    trusted[["caption"]].rename(columns={"caption": "text"}).to_csv(root / "real.csv", index=False)
    stream = root / "stream.jsonl"
    train[["caption"]].rename(columns={"caption": "text"}).to_json(stream, orient="records", lines=True)
    test[["caption"]].rename(columns={"caption": "text"}).to_csv(root / "test.csv", index=False)
    assert main(["fit", f"--real={root / 'real.csv'}", f"--general={stream}", f"--output={root / 'filter'}"]) == 0
    return root, test


def _decisions(root, input_file, name):
    output = root / f"{name}_decisions.csv"  # not {name}.csv: the input test.csv itself, which semcal filter refuses
    assert main(["filter", f"--filter={root / 'filter'}", f"--input={input_file}", f"--output={output}"]) == 0
    return pd.read_csv(output, keep_default_na=False)


def test_fit_then_filter_ranks_the_trusted_categories_and_passes_the_target_rate(audiocaps_fit):
    root, test = audiocaps_fit
    results = files.read_json(root / "filter" / "fit_results.json")
    target = results["pass_rate_target"]
    # Without labels the pass rate is the estimated trusted share: 30% of the stream are trusted-category captions.
    assert results["pass_rate_from"] == "the estimated trusted share of the stream"
    assert target == pytest.approx(0.30, rel=0.2) and target == results["trusted_share"]["estimate"]
    on_test = _decisions(root, root / "test.csv", "test")
    trusted = test["top_category"].isin(TRUSTED_CATEGORIES).to_numpy()
    assert roc_auc_score(trusted, on_test["accept_prob"]) >= 0.85
    on_stream = _decisions(root, root / "stream.jsonl", "stream")
    assert on_stream["accept_prob"].mean() == pytest.approx(target, rel=0.10)
    # The decisions are seeded draws below the acceptance: about the same share passes.
    assert on_stream["decision"].astype(str).str.lower().eq("true").mean() == pytest.approx(target, rel=0.10)


def test_the_fit_report_shows_the_label_free_check(audiocaps_fit):
    root, _ = audiocaps_fit
    results = files.read_json(root / "filter" / "fit_results.json")
    # Weighting the stream by acceptance makes it harder to tell from the trusted texts.
    assert results["two_sample_auc_after"] < results["two_sample_auc_before"] - 0.1
    assert 0.0 < results["effective_sample_share"] <= 1.0 and "labels" not in results
    assert results["filter"] == "tfidf_mom"  # the default source without labels
    report = (root / "filter" / "fit_report.md").read_text()
    assert "as the filter passes it" in report and "log_ratio.png" in report
    assert (root / "filter" / "log_ratio.png").stat().st_size > 1000
    assert files.read_record(root / "filter")["stage"] == "fit"


def test_a_trusted_corpus_that_is_not_drawn_from_the_stream(shared_data, tmp_path):
    """AG News: the trusted texts are Sports and Business articles of the test file, the stream
    the training file; new texts are the other half of the test file."""
    news = pd.read_csv(shared_data / "ag_news" / "test.csv")
    first, second = news.iloc[::2], news.iloc[1::2]
    first[first["label"].isin([2, 3])][["text"]].to_csv(tmp_path / "real.csv", index=False)
    config = FitConfig(
        real=str(tmp_path / "real.csv"),
        general=str(shared_data / "ag_news" / "train_8k.csv"),
        output=str(tmp_path / "filter"),
        pass_rate=0.5,
    )
    results = fit(config)
    assert results["pass_rate_target"] == 0.5 and results["two_sample_auc_after"] < results["two_sample_auc_before"]
    # The ranking by score: acceptances above 1/M are clipped to 1, and ties say nothing of the ranking.
    scores = Filter.load(tmp_path / "filter").scores(Items(second["text"].tolist()))
    assert roc_auc_score(second["label"].isin([2, 3]), scores) >= 0.9
    assert fit(config) == results  # up to date: nothing is done again


@pytest.mark.parametrize("source", ["tfidf", None])
def test_labels_calibrate_on_the_label_distribution(shared_data, tmp_path, source):
    """With a label column in both corpora the filter matches the trusted label mix: KL falls; the
    pass rate is the label distributions' 1 / max q(y)/p(y), the most a label-matched filter passes.
    Left out, the source is the evaluation's default, joint."""
    news = pd.read_csv(shared_data / "ag_news" / "test.csv")
    rng = np.random.default_rng(0)
    keep = rng.random(len(news)) < news["label"].map({1: 0.1, 2: 0.8, 3: 0.4, 4: 0.1}).to_numpy()
    news[keep][["text", "label_name"]].to_csv(tmp_path / "real.csv", index=False)
    general = pd.read_csv(shared_data / "ag_news" / "train_8k.csv")
    results = fit(
        FitConfig(
            real=str(tmp_path / "real.csv"),
            general=str(shared_data / "ag_news" / "train_8k.csv"),
            label_column="label_name",
            source=source,
            output=str(tmp_path / "filter"),
        )
    )
    assert results["filter"] == f"{source or 'joint'}_labmom"
    q = news[keep]["label_name"].value_counts(normalize=True)
    p = general["label_name"].value_counts(normalize=True)
    assert results["M"] == pytest.approx((q / p).max())
    assert results["pass_rate_from"].startswith("the label distributions")
    assert results["pass_rate_from"].endswith(f"set by the label {(q / p).idxmax()!r}")
    labels = results["labels"]
    assert labels["kl_after"] < 0.15 * labels["kl_before"] and labels["deception_reduction"] > 0.85
    assert "## Labels (held-out rows)" in (tmp_path / "filter" / "fit_report.md").read_text()
    assert (tmp_path / "filter" / "label_distributions.png").exists()


def test_bad_settings_are_one_sentence_before_any_work(tmp_path, capsys):
    texts = pd.DataFrame({"text": [f"text number {i}" for i in range(30)]})
    texts.to_csv(tmp_path / "a.csv", index=False)
    base = FitConfig(real=str(tmp_path / "a.csv"), general=str(tmp_path / "a.csv"), output=str(tmp_path / "out"))
    cases = {
        "source": ("control_sum", "the control source needs a matched control model"),
        "pass_rate": (1.5, "pass_rate must be between 0 and 1"),
        "calibration": ("nope", "calibration='nope' is not one of"),
        "real": (str(tmp_path / "missing.csv"), "does not exist"),
        "text_column": ("caption", "no column 'caption'"),
    }
    for name, (value, message) in cases.items():
        with pytest.raises(UserError, match=message):
            fit(FitConfig(**{**base.__dict__, name: value}))
    (tmp_path / "few.csv").write_text("text\n" + "".join(f"t {i}\n" for i in range(5)))
    with pytest.raises(UserError, match="has 5 texts; give at least 20"):
        fit(FitConfig(**{**base.__dict__, "real": str(tmp_path / "few.csv")}))
    assert not (tmp_path / "out").exists()
    capsys.readouterr()
    assert main(["fit", "--real=nothing.csv"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    json.dumps(base.__dict__)


def test_a_language_model_source_trains_scores_and_saves_its_models(tmp_path):
    """source=sum: a general and a real model fine-tuned (tiny, from scratch) beside the filter; the saved
    filter runs them on new texts exactly as the fit scored the held-out stream (which passes 1/M)."""
    from semcal.protocol.demo_data import generate_demo
    from tests.test_pipeline import TINY_FINETUNE

    demo = generate_demo(n_train=400, n_test=10, seed=3)["general_train"]
    texts, labels = list(demo["text"]), list(demo["label"])
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "stream.csv", index=False)
    trusted = [text for text, label in zip(texts, labels, strict=True) if label in ("animals", "weather")]
    pd.DataFrame({"text": trusted}).to_csv(tmp_path / "real.csv", index=False)
    config = FitConfig(
        real=str(tmp_path / "real.csv"),
        general=str(tmp_path / "stream.csv"),
        output=str(tmp_path / "filter"),
        source="sum",
        pass_rate=0.3,
        finetune_settings=dict(TINY_FINETUNE),
    )
    results = fit(config)
    assert results["filter"] == "sum_mom"
    models = tmp_path / "filter.models" / "models"
    assert (models / "general" / "semcal_record.json").is_file() and (models / "real" / "semcal_record.json").is_file()
    state = files.read_json(tmp_path / "filter" / "filter.json")["source_state"]
    assert state["models"]["real"]["path"] == "../filter.models/models/real"  # moves with the filter folder
    loaded = Filter.load(tmp_path / "filter")
    stream = files.read_json(tmp_path / "filter" / "fit_results.json")["counts"]["general_heldout"]
    from semcal.filter.fit_data import text_position

    held = [text for text, position in zip(texts, text_position(texts, 0), strict=True) if position < 0.2]
    assert len(held) == stream
    assert loaded.accept_probs(held).mean() == pytest.approx(0.3, abs=1e-6)


def test_the_label_pass_rate_divides_by_labels_with_enough_stream_rows():
    """1 / max q/p over labels with at least LABEL_MIN_ROWS stream rows; none such: the grid decides."""
    from semcal.filter.fit_data import FitData, Items
    from semcal.fit.fit import LABEL_MIN_ROWS, label_pass_rate

    def data(general_codes, real_codes):
        general, real = [f"g{i}" for i in range(len(general_codes))], [f"r{i}" for i in range(len(real_codes))]
        held = (np.zeros(len(general), bool), np.zeros(len(real), bool))
        codes = (np.array(general_codes), np.array(real_codes))
        return FitData.pooled(general, real, held, codes, stream=Items(general), m=2.0, labels=["a", "b", "c"])

    # p = (0.6, 0.3, 0.1), q = (0.2, 0.5, 0.3): label c (q/p 3) has 4 stream rows, so M = 0.5 / 0.3
    fitted = data([0] * 24 + [1] * 12 + [2] * 4, [0] * 2 + [1] * 5 + [2] * 3)
    assert LABEL_MIN_ROWS == 5 and label_pass_rate(fitted)[0] == pytest.approx(0.6)
    assert label_pass_rate(data([0] * 4 + [1] * 4, [0] * 3 + [1])) is None
