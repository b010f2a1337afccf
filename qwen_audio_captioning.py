"""Caption every audio clip of a data set with Qwen2-Audio: the paper's audio-to-text stage.

Writes the data set with a caption column added, captions.csv and errors.csv to output_dir.
Run `python qwen_audio_captioning.py --help` for the settings; `--name=value` overrides any of them.
"""

from semcal.captioning.captioning import AudioCaptionConfig, caption_audio
from semcal.core.config import run_script

# ---- settings: edit these (or pass --name=value) ----
dataset_name = "runs/audio/source"  # folder of audio files, save_to_disk folder, Hub id, or CSV/Parquet/JSONL
labels_csv = None  # folder of audio files only: CSV with file_name (relative path) and label columns
split_column = "split"  # one CSV/Parquet/JSONL file (or labels_csv): the column naming each row's split
splits = []  # splits to caption, e.g. ["general_train", "general_test"]; empty: all
output_dir = "runs/audio/captioned"  # data-set folder to write (new, or an earlier output of this stage)
caption_column = "text"  # name of the caption column added to the data set
model_name = "Qwen/Qwen2-Audio-7B-Instruct"  # Hub id or local folder of a Qwen2-Audio model
num_beams = 1  # beam search width (1: greedy); never sampling
max_new_tokens = 64  # longest caption, in tokens
batch_size = 4  # clips per generate call
chunk_size = 128  # captions written per chunk: an interrupted run loses at most the chunk in progress
max_items = None  # caption only the first N rows of each split (to try it on a sample); None: all
keep_media_column = False  # keep the audio column in the output data set (audio is large; False: text and labels)
device = None  # "cuda", "cuda:1", "cpu", ...; None: this process's GPU when there is one, else cpu
device_map = None  # "auto": spread a model too large for one GPU over all GPUs (one process only)
dtype = "auto"  # "auto" (bfloat16 on GPUs that support it, else float16; float32 on cpu), "float32", "float16" or "bfloat16"
overwrite = False  # discard an unfinished run of other settings in output_dir instead of refusing
# what only this kind of media needs
audio_column = "audio"  # column holding the clips (datasets Audio values, arrays with sampling_rate, bytes or paths)
prompt = "Describe the sounds in this audio clip."  # instruction given with each clip (the paper's)
# ------------------------------------------------------

if __name__ == "__main__":
    run_script(caption_audio, AudioCaptionConfig, globals())
