"""The evaluation stage's settings (semantic_calibration_evaluation.py's variables): apart from
the stage, so the stage (semcal.protocol.evaluation) and what reads its inputs (semcal.protocol.evaluation_inputs)
both import them."""

from __future__ import annotations

from dataclasses import dataclass

from semcal.filter import filters


@dataclass
class EvaluationConfig:
    dataset_name: str = "runs/demo/data"  # data set written by distort: general_train, general_test, real_train_*
    distortion: str = "mild"  # the trusted set is real_train_<distortion>: baseline / mild / moderate / severe
    text_column: str = "text"  # column holding the texts (captions) the language models scored
    label_column: str = "label"  # column holding each text's label
    label_map: str | None = None  # optional fine-to-coarse label map: a JSON file or a name in label_maps/
    # general_test under the GENERAL and the REAL model; none (both) for a filter that reads no LM scores (docs/evaluation.md)
    general_scores_csv: str | None = "runs/demo/scores/general_test.general/token_log_probs.csv"
    real_scores_csv: str | None = "runs/demo/scores/general_test.real_mild/token_log_probs.csv"
    general_heldout_csv: str | None = "runs/demo/scores/heldout.general/token_log_probs.csv"  # held-out texts, GENERAL
    real_heldout_csv: str | None = "runs/demo/scores/heldout.real_mild/token_log_probs.csv"  # held-out texts, REAL
    control_scores_csv: str | None = None  # general_test, matched CONTROL model (optional: the control_* filters)
    control_heldout_csv: str | None = None  # held-out texts, matched CONTROL model
    filter: str = filters.DEFAULT_FILTER  # THE filter: <source>_<calibration> (docs/evaluation.md); clipped is the paper's method
    top_p: float = 0.75  # share of the total |log-prob difference| the clipped score keeps (0: only the largest token)
    n_runs: int = 1000  # rejection-sampling runs; results are mean and population std over runs
    seed: int = 0  # seed of the random draws (shared by all filters) and of the classifier
    kl_epsilon: float = 0.0  # add this to every label frequency before KL (0: none; KL may then be infinite)
    classifier: bool = True  # also measure the TF-IDF + logistic regression filter (needs scikit-learn)
    candidates: bool = True  # also measure every calibrated filter and the label-posterior reference
    embedding_model: str | None = None  # a sentence-encoder folder (e.g. MiniLM's): the embedding_labmom filter
    min_kl_general: float = (
        0.01  # below this KL(general||real) counts as ~0: KL values are reported instead of a reduction
    )
    top_tokens: int = 3  # per text, how many tokens pushing the score up and down per_text.csv lists
    decision_window: int = 1000  # decision mode top: texts ranked together (results.json `decisions`)
    output_dir: str = "runs/demo/evaluation/mild"  # where results.json, summary.md, per_text.csv and the figure go
    overwrite: bool = False  # discard an unfinished evaluation of other settings left beside output_dir
