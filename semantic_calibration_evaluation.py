"""Stage 4: filter general_test by rejection sampling on the two models' log-prob ratio and
measure how close its label distribution comes to the real one (the paper's numbers).

Edit the settings below, or override any of them: python semantic_calibration_evaluation.py --name=value
(`python semantic_calibration_evaluation.py --help` lists them). The same stage runs as `semcal evaluate`.
"""

from semcal.core.config import run_script
from semcal.protocol.evaluation import EvaluationConfig, evaluate

# ---- settings: edit these (or pass --name=value) --------------------------------------
dataset_name = "runs/demo/data"  # data set written by distort: general_train, general_test, real_train_*
distortion = "mild"  # the trusted set is real_train_<distortion>: baseline / mild / moderate / severe
text_column = "text"  # column holding the texts (captions) the language models scored
label_column = "label"  # column holding each text's label
label_map = None  # optional fine-to-coarse label map: a JSON file or a name in label_maps/
general_scores_csv = "runs/demo/scores/general_test.general/token_log_probs.csv"  # general_test, GENERAL model
real_scores_csv = "runs/demo/scores/general_test.real_mild/token_log_probs.csv"  # general_test, REAL model
general_heldout_csv = "runs/demo/scores/heldout.general/token_log_probs.csv"  # held-out texts, GENERAL
real_heldout_csv = "runs/demo/scores/heldout.real_mild/token_log_probs.csv"  # held-out texts, REAL
control_scores_csv = None  # general_test, matched CONTROL model (optional: the control_* filters)
control_heldout_csv = None  # held-out texts, matched CONTROL model
filter = "joint_labmom"  # THE filter: <source>_<calibration> (docs/evaluation.md); clipped is the paper's method
top_p = 0.75  # share of the total |log-prob difference| the clipped score keeps (0: only the largest token)
n_runs = 1000  # rejection-sampling runs; results are mean and population std over runs
seed = 0  # seed of the random draws (shared by all filters) and of the classifier
kl_epsilon = 0.0  # add this to every label frequency before KL (0: none; KL may then be infinite)
classifier = True  # also measure the TF-IDF + logistic regression filter (needs scikit-learn)
candidates = True  # also measure every calibrated filter and the label-posterior reference
embedding_model = None  # a sentence-encoder folder (e.g. MiniLM's): the embedding_labmom filter
min_kl_general = 0.01  # below this KL(general||real) counts as ~0: KL values are reported instead of a reduction
top_tokens = 3  # per text, how many tokens pushing the score up and down per_text.csv lists
decision_window = 1000  # decision mode top: texts ranked together (results.json `decisions`)
output_dir = "runs/demo/evaluation/mild"  # where results.json, summary.md, per_text.csv and the figure go
overwrite = False  # discard an unfinished evaluation of other settings left beside output_dir
# ----------------------------------------------------------------------------------------

if __name__ == "__main__":
    run_script(evaluate, EvaluationConfig, globals())
