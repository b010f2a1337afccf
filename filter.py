"""Stage 5: apply the saved filter of an evaluation to new, unlabeled texts, or to a live stream.

Edit the settings below, or override any of them: python filter.py --name=value
(`python filter.py --help` lists them). The same stage runs as `semcal filter`.
"""

from semcal.core.config import run_script
from semcal.stream.filter_stream import FilterConfig, filter_texts

# ---- settings: edit these (or pass --name=value) --------------------------------------
filter = "runs/demo/evaluation/mild/filter"  # a saved filter: RUN_DIR/evaluation/<split>/filter
input = "-"  # CSV / JSONL / Parquet file, a text file (one text a line), a media folder, or - (stdin)
output = "-"  # a .csv or .jsonl file (replaced only when the run succeeds), or - (standard output, JSON lines)
text_column = "text"  # the field holding each item's text (CSV, JSONL, Parquet)
id_column = None  # the field holding each item's id; none: its row or line number (from 1)
input_format = None  # csv / jsonl / parquet / text; none: by extension (standard input: jsonl)
encoding = "utf-8"  # the text encoding of the input (CSV, JSONL, text, standard input), e.g. latin-1
stream = False  # read JSON lines from standard input as they come; write each batch at once
batch_size = 32  # streaming: texts scored together (1: a decision per line as it arrives); files: 16384
seed = 0  # seed of the decisions' draws: the same seed and id (or text) give the same decision
decision = "sample"  # sample (a seeded draw below accept_prob), threshold (accept_prob >= tau) or top (of a window)
rate = None  # threshold / top: the share of the stream to pass; none: the filter's 1/M
max_false_rejection = None  # threshold: tau rejects at most this share of held-out real rows
window = 1000  # top: items ranked together (decisions come once a window is full)
top_tokens = 3  # per item, how many tokens pushing the score up and down to list (0: none)
captions_from = None  # input a media folder: the captioning output (RUN/captions/<name>) to caption as
adapt = "none"  # follow a drifting stream: none, rate (pass rate), prior (label prior, by EM), refit (semcal.stream.adapt)
alarm = "none"  # drift alarms: none, auto, prior (label prior's KL) or mean_log_ratio; a record and a log line each
adapt_settings = {}  # window=500,update_every=25,trusted=PATH,... (semcal.stream.adapt)
engine = "local"  # local (this process) or ray: Parquet / JSONL partitions on a Ray cluster (semcal.stream.filter_ray)
ray_address = None  # engine=ray: an existing cluster (e.g. ray://head:10001); none: a local one
workers = 2  # engine=ray: filter actors, each loading the filter once
# ----------------------------------------------------------------------------------------

if __name__ == "__main__":
    run_script(filter_texts, FilterConfig, globals())
