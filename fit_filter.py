"""Fit a filter from two corpora: a trusted corpus and a sample of the stream to filter.

Edit the settings below, or override any of them: python fit_filter.py --name=value
(`python fit_filter.py --help` lists them). The same stage runs as `semcal fit`; apply the
filter it writes with filter.py (or `semcal filter --filter=OUTPUT`).
"""

from semcal.core.config import run_script
from semcal.fit.fit import FitConfig, fit

# ---- settings: edit these (or pass --name=value) --------------------------------------
real = "trusted.csv"  # the trusted corpus: a file, a saved data set, a Hub id, or PATH:SPLIT
general = "stream.jsonl"  # a sample of the stream to filter, read the same way
output = "runs/fit/filter"  # the filter folder to write (semcal filter --filter=this)
text_column = "text"  # column holding the texts, in both corpora
label_column = None  # optional labels in both corpora: calibrate on the label distribution
label_map = None  # fine-to-coarse label map (label_maps/ name or JSON path)
encoding = "utf-8"  # of CSV and JSONL corpora, e.g. latin-1
source = None  # none: joint with labels, tfidf without; ngram, embedding, label_posterior, clipped / sum / stack (LMs)
calibration = None  # none: mom without labels, labmom with them; or any calibration
pass_rate = None  # share of the stream to pass (1/M); none: derived from the data
heldout_fraction = 0.2  # share of each corpus held out to calibrate on
embedding_model = None  # a sentence-encoder folder, for source=embedding
base_model = "scratch"  # language-model sources: the base of both models (scratch, a Hub id/folder, .gguf)
finetune_settings = {}  # language-model sources: finetune settings, e.g. {"n_layer": "2", "num_epochs": "3"}
seed = 0  # seed of the held-out split and the classifiers
overwrite = False  # discard an unfinished fit of other settings left beside output
# ----------------------------------------------------------------------------------------

if __name__ == "__main__":
    run_script(fit, FitConfig, globals())
