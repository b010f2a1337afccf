"""Stage 3: per-token log-probabilities of every text of a split under one model.

Run it for general_test with the general model and with each real model (and, for score
normalisation, for the held-out general_train rows: --split_name=general_train
--heldout_only=true). Edit the settings below, or override any of them:
python token_sequence_probs.py --name=value (`--help` lists them). The same stage runs as
`semcal score`. A killed run continues where it stopped.
"""

from semcal.core.config import run_script
from semcal.lm.scoring import ScoreConfig, score_split

# ---- settings: edit these (or pass --name=value) --------------------------------------
dataset_name = "runs/demo/data"  # data set holding the split: save_to_disk folder, CSV/Parquet/JSONL file(s) or Hub id
split_column = "split"  # for a single data file: the column naming each row's split
split_name = "general_test"  # split whose texts are scored
text_column = "text"  # column holding the texts (captions)
model = "runs/demo/models/general"  # model folder written by finetune_gpt2.py, a Hub id, or a .gguf file
gguf_file = None  # a GGUF file inside model's folder
output_dir = "runs/demo/scores/general_test.general"  # gets token_log_probs.csv and semcal_record.json
framing = None  # None: as the model was trained (its record; else bos_eos); or bos_eos / paper
max_length = None  # None: as the model was trained (its record; else 512)
heldout_only = False  # score only the rows held out from training (general_train: texts no model trained on)
eval_fraction = None  # heldout_only: held-out share; None = the model's (its record; else 0.2)
split_seed = None  # heldout_only: held-out seed; None = the model's (its record; else 42)
batch_size = 32  # texts per forward pass (sorted by length, so padding stays small)
max_batch_tokens = 4096  # cap on padded tokens per batch (memory: the logits are tokens x vocabulary)
chunk_size = 1000  # texts per flushed chunk: a killed run redoes at most this many
overwrite = False  # discard an unfinished run in output_dir that was made with other settings
# ----------------------------------------------------------------------------------------

if __name__ == "__main__":
    run_script(score_split, ScoreConfig, globals())
