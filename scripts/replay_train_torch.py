#!/usr/bin/env python3
"""Replays the first steps of a `revattn train` run in PyTorch and compares the losses.

PyTorch starts from the run's own initial weights and trains on the run's own batches (both written
by `examples/export_training_batches.rs`) with the same recipe: HF GPT2LMHeadModel without
dropout, mean NLL over the target tokens, global gradient-norm clip, AdamW with decay on >= 2-D
tensors, the run's learning rate at every step. It prints PyTorch's loss next to the one
train_state.json recorded for each step.

f32 rounding differs between the two, and training amplifies any difference, so the losses agree
to about 1e-6 for the first tens of steps and then drift apart slowly, with neither side lower on
average. A real difference in the math shows from the first steps. The script fails if a loss in
the first --strict steps differs by more than 1e-4 (relative).

    cargo run --release --example export_training_batches -- RUN SUITE /tmp/replay 300
    python3 scripts/replay_train_torch.py --run RUN --export /tmp/replay
"""
import argparse
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--run", required=True, help="the revattn train output directory")
p.add_argument("--export", required=True, help="export_training_batches' output directory")
p.add_argument("--strict", type=int, default=40, help="steps that must agree to 1e-4")
p.add_argument("--threads", type=int, default=2)
args = p.parse_args()
torch.set_num_threads(args.threads)

state = json.load(open(os.path.join(args.run, "train_state.json")))
settings = state["settings"]
recorded = dict((step, loss) for step, loss in state["losses"])
layers, heads, width = map(int, settings["config"].split(","))
weights = load_file(os.path.join(args.export, "init.safetensors"))
vocab = weights["wte.weight"].shape[0]
model = GPT2LMHeadModel(GPT2Config(
    vocab_size=vocab, n_positions=settings["seq"], n_embd=width, n_layer=layers, n_head=heads,
    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0))
missing, unexpected = model.load_state_dict(
    {"transformer." + k: v for k, v in weights.items()}, strict=False)
assert not unexpected and all(k == "lm_head.weight" or k.endswith(".attn.bias") for k in missing), \
    (missing, unexpected)
model.tie_weights()
params = list(model.parameters())
adamw = settings["adamw"]
opt = torch.optim.AdamW(
    [{"params": [q for q in params if q.dim() >= 2], "weight_decay": adamw["weight_decay"]},
     {"params": [q for q in params if q.dim() < 2], "weight_decay": 0.0}],
    lr=adamw["lr"], betas=(adamw["beta1"], adamw["beta2"]), eps=adamw["eps"])

worst_strict = 0.0
print(f"{'step':>5} {'torch':>10} {'revattn':>10} {'rel diff':>10}")
for step, line in enumerate(open(os.path.join(args.export, "batches.jsonl"))):
    if step + 1 not in recorded:
        break
    batch = json.loads(line)
    ids = torch.tensor(batch["ids"]).view(batch["b"], batch["t"])
    targets = torch.tensor(batch["targets"]).view(batch["b"], batch["t"])
    for group in opt.param_groups:
        group["lr"] = batch["lr"]
    logits = model(ids).logits
    loss = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1), ignore_index=-1)
    opt.zero_grad()
    loss.backward()
    if adamw["grad_clip"] > 0:
        torch.nn.utils.clip_grad_norm_(params, adamw["grad_clip"])
    opt.step()
    theirs = recorded[step + 1]
    rel = abs(loss.item() - theirs) / abs(theirs)
    if step < args.strict:
        worst_strict = max(worst_strict, rel)
    if step < 10 or (step + 1) % 20 == 0:
        print(f"{step + 1:>5} {loss.item():>10.6f} {theirs:>10.6f} {rel:>10.2e}", flush=True)
print(f"largest relative difference in the first {args.strict} steps: {worst_strict:.2e}")
if worst_strict > 1e-4:
    raise SystemExit("FAIL: revattn's training diverges from PyTorch's from the start")
print("OK")
