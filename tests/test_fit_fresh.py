"""`semcal fit`'s numbers hold on fresh texts (AudioCaps and AG News from ../shared/data): the
pass rate and the deception reduction it reports are what texts it never saw get, and its
label-free trusted-share estimate finds the share the trusted corpus was drawn from. The
experiment is bench/bench_fit_fresh.py's, on the same corpora."""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from semcal.fit import fit_check
from semcal.fit.fit import FitConfig, fit
from semcal.fit.fit_results import TrustedShare
from tests.conftest import REPO_ROOT


def _bench():
    spec = importlib.util.spec_from_file_location("bench_fit_fresh", REPO_ROOT / "bench" / "bench_fit_fresh.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


BENCH = _bench()
CASES = [(dataset, layout) for dataset in ("audiocaps", "ag_news") for layout in ("drawn", "apart")]


@pytest.fixture(scope="module", params=CASES, ids=["/".join(case) for case in CASES])
def measured(request, shared_data, tmp_path_factory):
    dataset, layout = request.param
    root = tmp_path_factory.mktemp(f"fresh_{dataset}_{layout}")
    data = BENCH.corpora(dataset, layout, root)
    return data, BENCH.run(data, root)


def test_the_pass_rate_holds_on_fresh_texts(measured):
    """--pass_rate=0.3: both the seeded draws and the threshold pass 0.30 ± 5% of fresh texts."""
    _, row = measured
    assert row["fresh_sample"] == pytest.approx(BENCH.PASS_RATE, rel=0.05)
    assert row["fresh_threshold"] == pytest.approx(BENCH.PASS_RATE, rel=0.05)
    assert row["report_pass_rate"] == pytest.approx(BENCH.PASS_RATE, rel=0.05)


def test_the_reported_reduction_is_the_one_fresh_texts_get(measured):
    _, row = measured
    assert abs(row["report_reduction"] - row["fresh_reduction"]) <= 0.02, row


def test_the_label_free_estimate_finds_the_trusted_share(measured):
    data, row = measured
    assert row["estimate"] == pytest.approx(data.true_share, rel=0.20)
    assert row["estimate_low"] <= row["estimate"] <= row["estimate_high"]


def test_identical_and_disjoint_corpora_are_warned_about(shared_data, tmp_path, capsys):
    news = pd.read_csv(shared_data / "ag_news" / "train_8k.csv").sample(1500, random_state=0)
    captions = pd.read_csv(shared_data / "audiocaps_labeled" / "audiocaps_labeled.csv").sample(1500, random_state=0)
    news[["text"]].to_csv(tmp_path / "news.csv", index=False)
    captions[["caption"]].rename(columns={"caption": "text"}).to_csv(tmp_path / "captions.csv", index=False)
    same = fit(
        FitConfig(real=str(tmp_path / "news.csv"), general=str(tmp_path / "news.csv"), output=str(tmp_path / "a"))
    )
    assert same["trusted_share"]["estimate"] > 0.9 and same["overlap_share"] == 1.0
    assert any("cannot be told from the stream" in line for line in same["advice"])
    assert "Read this first" in (tmp_path / "a" / "fit_report.md").read_text()
    disjoint = fit(
        FitConfig(real=str(tmp_path / "news.csv"), general=str(tmp_path / "captions.csv"), output=str(tmp_path / "b"))
    )
    assert disjoint["trusted_share"]["estimate"] < 0.02 and disjoint["overlap_share"] == 0.0
    assert any("almost nothing like the trusted corpus" in line for line in disjoint["advice"])
    assert "warning: The stream holds almost nothing like the trusted corpus" in capsys.readouterr().out


def test_an_auc_below_one_half_after_weighting_is_warned_about():
    share = TrustedShare(estimate=0.4, interval=[0.3, 0.5], level=0.95, method="")
    # advice reads only these fields of FitResults
    fine = fit_check.advice(SimpleNamespace(trusted_share=share, two_sample_auc_before=0.8, two_sample_auc_after=0.55))
    assert fine == []
    low = fit_check.advice(SimpleNamespace(trusted_share=share, two_sample_auc_before=0.8, two_sample_auc_after=0.43))
    assert len(low) == 1 and "below 0.5" in low[0]


def test_held_out_by_text_a_text_in_both_corpora_is_held_out_on_both_sides():
    from semcal.fit.fit import fit_data

    texts = [f"caption number {i}" for i in range(400)]
    data = fit_data(FitConfig(), texts, texts[:100], None, None)
    general_held, real_held = data.heldout[:400], data.heldout[400:]
    assert (general_held[:100] == real_held).all()
    assert 0.1 < general_held.mean() < 0.3  # about heldout_fraction
    # No source sees a held-out row: the joint source's cross-fit runs on the training rows.
    assert data.sources_train_only and not data.training_part().heldout.any()


def test_the_encoding_setting_reads_other_encodings(tmp_path):
    from semcal.core.errors import UserError

    rows = "text\n" + "".join(f"café number {i} au lait\n" for i in range(40))
    (tmp_path / "latin.csv").write_bytes(rows.encode("latin-1"))
    (tmp_path / "general.csv").write_text("text\n" + "".join(f"tea number {i}\n" for i in range(60)) + rows[5:])
    base = {"real": str(tmp_path / "latin.csv"), "general": str(tmp_path / "general.csv"), "pass_rate": 0.3}
    with pytest.raises(UserError, match="is not valid utf-8 text .* set encoding="):
        fit(FitConfig(**base, output=str(tmp_path / "f")))
    assert not (tmp_path / "f").exists()
    results = fit(FitConfig(**base, output=str(tmp_path / "f"), encoding="latin-1"))
    assert results["counts"]["real"] == 40 and np.isfinite(results["pass_rate_heldout_stream"])


@pytest.mark.parametrize("output", [".", "..", "some/.."])
def test_an_output_that_is_a_folder_itself_is_one_sentence(tmp_path, output, capsys, monkeypatch):
    from semcal.cli.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.csv").write_text("text\n" + "".join(f"text number {i}\n" for i in range(30)))
    assert main(["fit", "--real=a.csv", "--general=a.csv", f"--output={output}"]) == 2
    err = capsys.readouterr().err
    assert "is a folder itself, not a new folder's name" in err and "Traceback" not in err
