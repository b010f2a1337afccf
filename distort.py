"""Stage 1: make the 'real' splits, label-distorted subsets of general_train at target KLs.

Edit the settings below, or override any of them: python distort.py --name=value
(`python distort.py --help` lists them). The same stage runs as `semcal distort`.
"""

from semcal.core.config import run_script
from semcal.protocol.distort import DistortConfig, distort

# ---- settings: edit these (or pass --name=value) --------------------------------------
dataset_name = "runs/demo/data"  # a save_to_disk folder, CSV/Parquet/JSONL file(s), or a Hub id
output_dir = ""  # data-set folder to write; empty = add the splits to dataset_name (a save_to_disk folder)
label_column = "label"  # column holding each row's label
text_column = "text"  # column holding the texts: matches a held real split's rows to general_train
label_map = None  # fine-to-coarse label map: a label_maps/ name or a JSON path; None = labels as they are
split_column = "split"  # for a single data file: the column naming each row's split
targets = {"baseline": 0.0, "mild": 0.25, "moderate": 0.6, "severe": 0.8}  # split name: target KL(general || real)
baseline_fraction = 0.4  # size of a target-0 split (uniform random subset) as a share of general_train
strategy = "tilt"  # tilt: favour labels of a seeded random score; max_subset: keep the most rows at the target
tolerance = 0.02  # accepted relative error of the achieved KL
seed = 0  # makes the favoured labels and the drawn rows reproducible
controls = False  # also write control_train_<name>: uniform rows of general_train, as many as each real split
overwrite = False  # replace an earlier distort output of other settings in output_dir
# ----------------------------------------------------------------------------------------

if __name__ == "__main__":
    run_script(distort, DistortConfig, globals())
