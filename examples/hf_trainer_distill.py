"""Distil SmolLM2-135M-Instruct into a tiny Llama-3.2-tokenizer student with the Hugging Face Trainer.

    python examples/hf_trainer_distill.py data.jsonl runs/hf-demo
    torchrun --nproc_per_node 2 examples/hf_trainer_distill.py data.jsonl runs/hf-demo
    accelerate launch --num_processes 2 examples/hf_trainer_distill.py data.jsonl runs/hf-demo

data.jsonl: one {"text": "..."} per line. The teacher keeps its own tokenizer; xtok aligns the two.
Everything else is a plain Trainer: bf16=True, gradient_accumulation_steps, fsdp="full_shard" on GPUs,
--resume continues from the newest checkpoint-N in the output directory.
"""
import argparse

import torch
from datasets import load_dataset
from transformers import TrainingArguments

from xtok_core import load_model
from xtok_core.integrations.hf import CrossTokenizerDistillTrainer

p = argparse.ArgumentParser()
p.add_argument("data")
p.add_argument("out")
p.add_argument("--teacher", default="smollm2-135m-instruct")
p.add_argument("--student", default="tiny:llama-3.2")  # or any local HF causal-LM directory
p.add_argument("--loss", default="pkl", choices=["pkl", "hkl", "gold", "gold-trl", "uld", "auto"])
p.add_argument("--max-steps", type=int, default=200)
p.add_argument("--batch-size", type=int, default=4)
p.add_argument("--max-length", type=int, default=128)
p.add_argument("--fsdp", default="")  # e.g. "full_shard auto_wrap" on GPUs
p.add_argument("--resume", action="store_true")
a = p.parse_args()

teacher = load_model(a.teacher)
student = load_model(a.student, tiny_dim=64, tiny_layers=2)  # tiny_* only size a tiny: student
dataset = load_dataset("json", data_files=a.data, split="train")
args = TrainingArguments(output_dir=a.out, max_steps=a.max_steps, per_device_train_batch_size=a.batch_size,
                         learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=10, logging_steps=10,
                         save_steps=100, report_to="none", use_cpu=not torch.cuda.is_available(), fsdp=a.fsdp)
trainer = CrossTokenizerDistillTrainer(model=student, teachers=[teacher], args=args, train_dataset=dataset,
                                       loss=a.loss, max_length=a.max_length)
trainer.train(resume_from_checkpoint=a.resume or None)
trainer.save_model(a.out)
