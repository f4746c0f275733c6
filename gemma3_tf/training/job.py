"""`gemma3-tf train`: a preset and TFRecords in, a fine-tuned preset out."""

import json
import os

from gemma3_tf.training.strategy import resolve_strategy
from gemma3_tf.data import Schema
from gemma3_tf.training.trainer import TrainConfig, Trainer


def load_model(preset, strategy, dtype=None, lora_rank=0, remat=False):
    """The causal LM of `preset`, its variables created under `strategy`; with `remat`, each decoder
    block's activations are recomputed in the backward pass instead of stored."""
    import gemma3_tf

    with strategy.scope():
        causal_lm = gemma3_tf.Gemma3CausalLM.from_preset(preset, dtype=dtype)
        if lora_rank:
            causal_lm.backbone.enable_lora(lora_rank)
    # Each decoder block's activations recomputed in the backward pass (`Gemma3Backbone.forward`).
    causal_lm.backbone.remat = remat
    return causal_lm


def train(preset, train_data, output_dir, steps=None, epochs=None, global_batch_size=8, eval_data=None,
          strategy="auto", tpu=None, dtype=None, lora_rank=0, remat=False, merge_lora=True, progress=True,
          **config):
    """Fine-tunes `preset` on `train_data` (a TFRecord glob); writes checkpoints, `final/` and `summary.json`
    to `output_dir`, resuming from its latest checkpoint (`merge_lora=False`: `final/` keeps the LoRA
    adapters apart from the base weights). `steps` is the total step count; `epochs`
    derives it from the data's example count. Other keyword arguments go to `TrainConfig`."""
    if (steps is None) == (epochs is None):
        raise ValueError("Give exactly one of `steps` and `epochs`.")
    if steps is None:
        examples = Schema.for_pattern(train_data).counts.get("written", 0)
        steps = max(epochs * examples // global_batch_size, 1)
    strategy = resolve_strategy(strategy, tpu)
    causal_lm = load_model(preset, strategy, dtype, lora_rank, remat)
    trainer = Trainer(causal_lm, strategy, TrainConfig(steps=steps, global_batch_size=global_batch_size, **config),
                      output_dir)
    summary = trainer.fit(train_data, eval_data, progress=progress)
    summary.update(preset=str(preset), lora_rank=lora_rank, dtype=dtype or "float32",
                   final_preset=os.path.join(output_dir, "final"))
    trainer.save(summary["final_preset"], summary, merge_lora=merge_lora)
    print(json.dumps(summary, indent=2))
    return summary
