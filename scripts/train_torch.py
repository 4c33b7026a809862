#!/usr/bin/env python3
"""`revattn train`'s recipe in PyTorch on the CPU: a cross-check and a fast place to try recipes.

Trains the same GPT-2 architecture (HF GPT2LMHeadModel, tied lm_head, no dropout) on the same task
suite (`revattn tasks`) with the same batches in distribution: each step B episodes of uniformly
drawn tasks sharing one shot count n in 0..max_shots, loss on every answer token, AdamW
(0.9, 0.95, eps 1e-8, decay on >= 2-D tensors), global clip 1.0, linear warmup then cosine to
0.1·lr. It prints the mean held-out top-1 accuracy at 0/1/5/10 shots and the 5-shot accuracy per
task. Its own random streams draw the episodes and the extractive test lists (same sizes as the
suite's split), so its numbers are comparable with revattn's, not identical.

It found the recipe problems of version 1 of the suite (copy vs antonym, first/middle/last: not
learned by 3-layer models, whatever the width, depth or learning rate) in minutes instead of hours,
and checks the shipped suite: 5-shot 1.00 from about step 1,000. The shipped model must still come
from `revattn train` (assets/default-model/MODEL_CARD.md). To compare a revattn run with PyTorch
step by step, on the run's own weights and batches, use scripts/replay_train_torch.py.

    python3 scripts/train_torch.py --tasks assets/tasks --config 3,4,64 --steps 2200 --batch 24
"""
import argparse
import json
import math
import os
import random
import time

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import GPT2Config, GPT2LMHeadModel

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--tasks", default="assets/tasks")
p.add_argument("--config", default="3,4,64", help="L,H,C")
p.add_argument("--steps", type=int, default=2200)
p.add_argument("--batch", type=int, default=24)
p.add_argument("--seq", type=int, default=160, help="n_positions")
p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--warmup", type=int, default=100)
p.add_argument("--weight-decay", type=float, default=0.1)
p.add_argument("--max-shots", type=int, default=10)
p.add_argument("--eval-every", type=int, default=200)
p.add_argument("--eval-queries", type=int, default=64)
p.add_argument("--induction", type=float, default=0.0,
               help="fraction of episodes replaced by repeated random word sequences (w1..wk w1..wk)")
p.add_argument("--induction-steps", type=int, default=0,
               help="train on induction sequences only for the first N steps (a curriculum)")
p.add_argument("--only", default="",
               help="comma-separated task names to train and evaluate on (default: every task)")
p.add_argument("--wpe-init", default="normal", choices=["normal", "sinusoidal"],
               help="wpe at init: HF's N(0, 0.02), or sinusoids (Vaswani et al.) scaled to --wpe-scale")
p.add_argument("--wpe-scale", type=float, default=0.1, help="RMS of a sinusoidal wpe row")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()
torch.set_num_threads(args.threads)
random.seed(args.seed)
torch.manual_seed(args.seed)

tok = Tokenizer.from_file(os.path.join(args.tasks, "tokenizer.json"))
suite = json.load(open(os.path.join(args.tasks, "suite.json")))
vocab = suite["vocab_size"]
eot = suite["special_tokens"]["end_of_text"]


def encode(text):
    return tok.encode(text, add_special_tokens=False).ids


# task name -> (train pairs, test pairs); abstractive: train = all pairs (the maps live in the
# weights), extractive: test lists disjoint from train lists, shared by the extractive tasks.
tasks = {}
split_rng = random.Random(args.seed + 1)
extractive_perm = None
for t in suite["tasks"]:
    pairs = json.load(open(os.path.join(args.tasks, t["file"])))
    n_test = t["test"]
    if t["kind"] == "extractive":
        if extractive_perm is None:
            extractive_perm = list(range(len(pairs)))
            split_rng.shuffle(extractive_perm)
        tasks[t["name"]] = ([pairs[i] for i in extractive_perm[n_test:]],
                            [pairs[i] for i in extractive_perm[:n_test]])
    else:
        perm = list(range(len(pairs)))
        split_rng.shuffle(perm)
        tasks[t["name"]] = (pairs, [pairs[i] for i in perm[:n_test]])
names = [n for n in tasks if not args.only or n in args.only.split(",")]
if not names:
    raise SystemExit(f"--only {args.only!r} names no task of the suite ({', '.join(tasks)})")

def episode(demos, query):
    """PAPER.md's template, encoded as one text like `revattn train` (so "\n\n" before "Q" is two
    "\n" tokens, as in GPT-2); returns ids and the index of every answer token."""
    text = "<|endoftext|>" + "".join(f"Q: {d['input']}\nA: {d['output']}\n\n" for d in demos)
    ids = encode(text + f"Q: {query['input']}\nA: {query['output']}")
    m = len(MARKER)
    return ids, [p for p in range(m, len(ids)) if ids[p - m:p] == MARKER]


MARKER = encode("\nA:")


def draw_demos(pool, n, query, rng):
    candidates = [q for q in pool if q["input"] != query["input"]]
    return rng.sample(candidates, min(n, len(candidates)))


def padded(seqs):
    length = max(len(s) for s, _ in seqs)
    ids = torch.full((len(seqs), length), eot, dtype=torch.long)
    targets = torch.full((len(seqs), length), -100, dtype=torch.long)
    for i, (s, answers) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        for a in answers:
            targets[i, a - 1] = s[a]
    return ids, targets


L, H, C = map(int, args.config.split(","))
model = GPT2LMHeadModel(GPT2Config(
    vocab_size=vocab, n_positions=args.seq, n_embd=C, n_layer=L, n_head=H,
    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=eot, eos_token_id=eot))
if args.wpe_init == "sinusoidal":
    with torch.no_grad():
        pos = torch.arange(args.seq, dtype=torch.float64)[:, None]
        freq = torch.exp(-math.log(10000.0) * torch.arange(0, C, 2, dtype=torch.float64) / C)
        wpe = torch.zeros(args.seq, C, dtype=torch.float64)
        wpe[:, 0::2] = torch.sin(pos * freq)
        wpe[:, 1::2] = torch.cos(pos * freq)
        model.transformer.wpe.weight.copy_((wpe * args.wpe_scale * math.sqrt(2)).float())
params = list(model.parameters())
opt = torch.optim.AdamW(
    [{"params": [q for q in params if q.dim() >= 2], "weight_decay": args.weight_decay},
     {"params": [q for q in params if q.dim() < 2], "weight_decay": 0.0}],
    lr=args.lr, betas=(0.9, 0.95), eps=1e-8)


def learning_rate(step):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


rng = random.Random(args.seed)


def batch(step):
    n = rng.randint(0, args.max_shots)
    seqs = []
    for _ in range(args.batch):
        if step < args.induction_steps or rng.random() < args.induction:
            k = rng.randint(4, (args.seq - 1) // 2)
            words = [rng.randrange(vocab - 300, vocab) for _ in range(k)]
            seqs.append(([eot] + words + words, list(range(k + 2, 2 * k + 1))))
            continue
        train, _ = tasks[rng.choice(names)]
        query = rng.choice(train)
        seqs.append(episode(draw_demos(train, n, query, rng), query))
    return padded(seqs)


@torch.no_grad()
def evaluate(shots=(0, 1, 5, 10)):
    eval_rng = random.Random(args.seed + 2)
    accuracy = {}
    for name in names:
        train, test = tasks[name]
        for n in shots:
            seqs = [episode(draw_demos(train, n, q, eval_rng), q) for q in test[: args.eval_queries]]
            ids, _ = padded(seqs)
            logits = model(ids).logits
            correct = sum(int(logits[i, a[-1] - 1].argmax().item() == s[a[-1]])
                          for i, (s, a) in enumerate(seqs))
            accuracy[(name, n)] = correct / len(seqs)
    return accuracy


start = time.time()
for step in range(args.steps):
    for group in opt.param_groups:
        group["lr"] = learning_rate(step)
    ids, targets = batch(step)
    logits = model(ids).logits
    loss = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1), ignore_index=-100)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
        acc = evaluate()
        means = " ".join(f"{n}-shot {sum(acc[(t, n)] for t in names) / len(names):.2f}"
                         for n in (0, 1, 5, 10))
        per_task = " ".join(f"{t} {acc[(t, 5)]:.2f}" for t in names)
        print(f"step {step + 1} loss {loss.item():.3f} {time.time() - start:.0f} s | {means} | "
              f"5-shot: {per_task}", flush=True)
