"""Language models: loading, framing, scratch GPT-2, LoRA, the Trainer, fine-tuning and per-token scoring (stages 2 and 3).

May import semcal.store and semcal.core.
"""
