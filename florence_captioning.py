"""Caption every image of a data set (Florence-2 by default): the paper's image-to-text stage.

Writes the data set with a caption column added, captions.csv and errors.csv to output_dir.
Run `python florence_captioning.py --help` for the settings; `--name=value` overrides any of them.
"""

from semcal.captioning.captioning import ImageCaptionConfig, caption_images
from semcal.core.config import run_script

# ---- settings: edit these (or pass --name=value) ----
dataset_name = "runs/images/source"  # folder of image files, save_to_disk folder, Hub id, or CSV/Parquet/JSONL
labels_csv = None  # folder of image files only: CSV with file_name (relative path) and label columns
split_column = "split"  # one CSV/Parquet/JSONL file (or labels_csv): the column naming each row's split
splits = []  # splits to caption, e.g. ["general_train", "general_test"]; empty: all
output_dir = "runs/images/captioned"  # data-set folder to write (new, or an earlier output of this stage)
caption_column = "text"  # name of the caption column added to the data set (the paper's data sets use text)
model_name = "florence-community/Florence-2-large"  # Hub id or local folder: Florence-2 or another image-to-text model
num_beams = 3  # beam search width, as in the paper (1: greedy); never sampling
max_new_tokens = 512  # longest caption, in tokens
batch_size = 8  # images per generate call
chunk_size = 128  # captions written per chunk: an interrupted run loses at most the chunk in progress
max_items = None  # caption only the first N rows of each split (to try it on a sample); None: all
keep_media_column = True  # keep the image column in the output data set (False: text and labels only)
device = None  # "cuda", "cuda:1", "cpu", ...; None: this process's GPU when there is one, else cpu
device_map = None  # "auto": spread a model too large for one GPU over all GPUs (one process only)
dtype = "auto"  # "auto" (bfloat16 on GPUs that support it, else float16; float32 on cpu), "float32", "float16" or "bfloat16"
overwrite = False  # discard an unfinished run of other settings in output_dir instead of refusing
# what only this kind of media needs
image_column = "image"  # column holding the images (datasets Image values, bytes or file paths)
task_prompt = "<MORE_DETAILED_CAPTION>"  # Florence-2 task (the paper's); or <CAPTION>, <DETAILED_CAPTION>, <OCR>
text_prompt = ""  # other models only: text given with each image (BLIP: a caption prefix; chat models: the instruction)
# ------------------------------------------------------

if __name__ == "__main__":
    run_script(caption_images, ImageCaptionConfig, globals())
