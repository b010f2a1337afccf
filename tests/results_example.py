"""A complete results.json of made-up numbers, as `semcal evaluate` writes it, for tests of its readers."""

from __future__ import annotations

from typing import Any

from semcal.reports import results as result_file


def results_dict(labels: list[str], real: dict[str, float], filter_name: str = "semcal") -> dict[str, Any]:
    """results.json's content (schema_version included) for an evaluation of `labels` with real shares `real`."""
    block = {
        "kl_mean": 0.1,
        "kl_std": 0.01,
        "kl_infinite_runs": 0,
        "tvd_mean": 0.1,
        "tvd_std": 0.01,
        "pass_rate_mean": 0.5,
        "pass_rate_std": 0.01,
        "empty_runs": 0,
        "n_runs": 2,
        "accept_prob_mean": 0.5,
        "expected_kl": 0.1,
        "expected_tvd": 0.1,
        "expected_distribution": real,
        "mean_distribution": real,
        "kl_ratio": 0.5,
        "deception_reduction": 0.5,
        "infinite_kl_labels": [],
    }
    mode = {"pass_rate": 0.5, "kl": 0.1, "deception_reduction": 0.5}
    written = {
        "stage": "evaluate",
        "dataset_name": "runs/test/data",
        "distortion": "mild",
        "real_split": "real_train_mild",
        "label_column": "label",
        "filter_name": filter_name,
        "paper_filter": "clipped",
        "config": {"seed": 0},
        "join": {},
        "excluded_nonfinite": {"general_test": 0, "heldout": 0},
        "counts": {"general_train": 8, "general_test": 4, "real_train": 4, "evaluated": 4, "heldout": 0},
        "warnings": [],
        "inputs": {},
        "M": 2.0,
        "ideal_pass_rate": 0.5,
        "labels": labels,
        "distributions": {name: real for name in ("real_train", "general_train", "general_test", "evaluated")},
        "kl_general": 0.2,
        "tvd_general": 0.2,
        "kl_general_is_zero": False,
        "kl_note": "",
        "filters": {"semcal": {"filter_name": filter_name, **block}, "oracle": block},
        "variants": {},
        "monte_carlo": {"n_runs": 2, "seed": 0, "std": "", "common_random_numbers": "", "pass_rate_unit": ""},
        "real_rows": "subset",
        "per_item": {"rows": "held-out rows", "filters": {}, "note": "not measured"},
        "decisions": {
            "rate": 0.5,
            "window": 4,
            "texts": "",
            "note": "",
            "filters": {filter_name: {"sample": mode, "threshold": {**mode, "tau": 0.5}, "top": mode}},
        },
    }
    return result_file.from_dict(written).to_dict()  # checked against the schema
