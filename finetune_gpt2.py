"""Stage 2: fine-tune (or train from scratch) one causal language model on the texts of one split.

Run it once for general_train and once per real_train_<distortion> split. Edit the settings
below, or override any of them: python finetune_gpt2.py --name=value (`--help` lists them).
The same stage runs as `semcal finetune`. A killed run resumes from its last checkpoint.
"""

from semcal.core.config import run_script
from semcal.lm.finetune import FinetuneConfig, finetune

# ---- settings: edit these (or pass --name=value) --------------------------------------
dataset_name = "runs/demo/data"  # data set with the split: save_to_disk folder, CSV/Parquet/JSONL file(s) or Hub id
split_column = "split"  # for a single data file: the column naming each row's split
split_name = "general_train"  # split to train on: general_train or real_train_<distortion>
text_column = "text"  # column holding the texts (captions)
base_model = "gpt2"  # Hub id or local folder (the paper: gpt2), scratch (small GPT-2 + BPE trained here), or .gguf
gguf_file = None  # a GGUF file inside base_model's folder, e.g. SmolLM2-135M-Instruct.Q4_1.gguf
init_from = None  # trained model folder to start from (a real model from the general one); keeps its tokenizer
output_dir = "runs/demo/models/general"  # gets the model, tokenizer and semcal_record.json
tokenizer_dir = None  # scratch: the data set's shared tokenizer folder; None = tokenizer/ beside output_dir
framing = "bos_eos"  # bos_eos: BOS + text + EOS, every text token scored; paper: the text, first token unscored
max_length = 512  # framed texts are cut to this many tokens (scratch: the model's position table)
eval_fraction = 0.2  # share of general_train rows held out for evaluation (the same rows for every model)
split_seed = 42  # seed of the held-out assignment
seed = 42  # seed of weight init, data order and dropout: the same seed gives the same model
learning_rate = None  # None: 2e-5 (the paper's, pretrained base) or 1e-3 (scratch)
weight_decay = 0.001  # AdamW weight decay
batch_size = 8  # texts per training step
eval_batch_size = 32  # texts per evaluation batch
num_epochs = 5  # training epochs; evaluated and checkpointed after each
warmup_ratio = 0.1  # share of the steps with a linear learning-rate warm-up, in [0, 1)
early_stopping_patience = 0  # stop after this many epochs without a lower eval loss; 0 = never
keep_last = False  # keep the last epoch's weights instead of those with the lowest eval loss
fp16 = True  # mixed precision on CUDA: bfloat16 where the GPU supports it, else float16 (ignored without CUDA)
pad_to_max_length = False  # pad every text to max_length like the paper's code (slow; for benchmarks only)
n_layer = 4  # scratch: transformer layers
n_embd = 256  # scratch: embedding width
n_head = 4  # scratch: attention heads (must divide n_embd)
vocab_size = 4096  # scratch: BPE vocabulary size of the data set's shared tokenizer
lora_r = 0  # LoRA rank: >0 trains low-rank adapters on a pretrained base (peft) instead of every weight; 0 = full
lora_alpha = 32  # LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)
lora_dropout = 0.05  # dropout on the LoRA branch's input
lora_target_modules = "auto"  # layers LoRA adapts, joined by + (q_proj+v_proj); auto: GPT-2 / Llama-shaped defaults
lora_merge = True  # save base + adapter merged into an ordinary model; False: the adapter alone, scored on its base
overwrite = False  # replace a model (finished or not) in output_dir that was made with other settings
push_to_hub = False  # upload the model when trained (private repo); the token comes from $HF_TOKEN, never from here
hub_model_id = None  # Hub repository for push_to_hub; None = the output folder's name
# ----------------------------------------------------------------------------------------

if __name__ == "__main__":
    run_script(finetune, FinetuneConfig, globals())
