#!/usr/bin/env python3
"""Checks revattn's maps.safetensors against a float64 PyTorch-autograd reference.

    python3 scripts/compare_maps.py MODEL_DIR MAPS_DIR [MAPS_DIR ...]

MODEL_DIR is the HF GPT-2 directory revattn was run on (config.json, model.safetensors,
tokenizer.json); each MAPS_DIR holds a maps.safetensors written by `revattn maps --out MAPS_DIR`.
For every MAPS_DIR the prompt, target, foil, bos and loss are read from the file's metadata; the
input ids are re-encoded with MODEL_DIR/tokenizer.json and must equal the stored input_ids. The model
is loaded with transformers in float64 (eager attention, eval mode) and the loss, logits at the last
prompt position, attention A, Reversed Attention
    R = A ⊙ (G·Vᵀ − rowsum(A ⊙ G·Vᵀ)) / sqrt(hs),   G = ∂loss/∂(attn.c_proj input), per head,
and the per-head Frobenius norms of A and R are recomputed. For each tensor it prints max|Δ|,
max|ref| and relative = max|Δ|/max|ref| (plus the worst layer/head for A and R), then one verdict
line: `OK (all ≤ 1e-4 relative)` or `FAIL ...`. Exit status 1 on FAIL.

Requires: torch, transformers (5.x tested), tokenizers, safetensors. CPU only.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from tokenizers import Tokenizer
from transformers import GPT2LMHeadModel

TOL = 1e-4
EOT = "<|endoftext|>"
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()


def load_model(model_dir: Path) -> GPT2LMHeadModel:
    model = GPT2LMHeadModel.from_pretrained(str(model_dir), attn_implementation="eager")
    return model.double().eval()


def read_maps(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def encode(tok: Tokenizer, meta: dict[str, str]) -> tuple[list[int], list[int], list[int], int]:
    """(input ids, target ids, foil ids, last prompt position) exactly as revattn defines them."""
    bos = meta["bos"] == "true"
    pids = ([tok.token_to_id(EOT)] if bos else []) + tok.encode(meta["prompt"], add_special_tokens=False).ids
    tids = tok.encode(meta["target"], add_special_tokens=False).ids
    fids = tok.encode(meta["foil"], add_special_tokens=False).ids if meta.get("foil") else []
    ids = pids + tids if meta["loss"] == "ce" else pids
    return ids, tids, fids, len(pids) - 1


def loss_fn(kind: str, logits: torch.Tensor, last: int, tids: list[int], fids: list[int]) -> torch.Tensor:
    if kind == "nll":
        return -torch.log_softmax(logits[last], dim=-1)[torch.tensor(tids)].sum()
    if kind == "ce":
        n = len(tids)
        lp = torch.log_softmax(logits[last:last + n], dim=-1)
        return -lp[torch.arange(n), torch.tensor(tids)].mean()
    if kind == "logit-diff":
        return logits[last, fids[0]] - logits[last, tids[0]]
    raise ValueError(f"unknown loss {kind!r}")


def reference(model: GPT2LMHeadModel, ids: list[int], kind: str, last: int, tids, fids) -> dict[str, torch.Tensor]:
    """float64 loss, logits_last, A [L,H,T,T], R [L,H,T,T] and Frobenius norms via autograd hooks."""
    cfg = model.config
    L, NH, C = cfg.n_layer, cfg.n_head, cfg.n_embd
    hs = C // NH
    V, G, handles = [None] * L, [None] * L, []
    for l, blk in enumerate(model.transformer.h):
        handles.append(blk.attn.c_attn.register_forward_hook(
            lambda mod, args, out, l=l: V.__setitem__(l, out.detach()[0, :, 2 * C:3 * C])))
        handles.append(blk.attn.c_proj.register_full_backward_hook(
            lambda mod, gin, gout, l=l: G.__setitem__(l, gin[0].detach()[0])))
    model.zero_grad(set_to_none=True)
    out = model(input_ids=torch.tensor([ids]), output_attentions=True, use_cache=False)
    logits = out.logits[0]
    loss = loss_fn(kind, logits, last, tids, fids)
    loss.backward()
    for h in handles:
        h.remove()
    A = torch.stack([a.detach()[0] for a in out.attentions])  # [L, NH, T, T]
    R = torch.empty_like(A)
    for l in range(L):
        for h in range(NH):
            sl = slice(h * hs, (h + 1) * hs)
            dA = G[l][:, sl] @ V[l][:, sl].T
            R[l, h] = A[l, h] * (dA - (A[l, h] * dA).sum(-1, keepdim=True)) / math.sqrt(hs)
    return {
        "loss": loss.detach().reshape(1),
        "logits_last": logits.detach()[last],
        "attention": A,
        "reversed_attention": R,
        "attention_norms": A.flatten(2).norm(dim=-1),
        "ra_norms": R.flatten(2).norm(dim=-1),
    }


def compare(name: str, got: torch.Tensor, ref: torch.Tensor) -> tuple[float, str]:
    if tuple(got.shape) != tuple(ref.shape):
        print(f"  {name:20s} shape {tuple(got.shape)} != reference {tuple(ref.shape)}")
        return math.inf, f"{name} shape"
    d = (got.to(torch.float64) - ref).abs()
    dmax, rmax = d.max().item(), ref.abs().max().item()
    rel = dmax / rmax if rmax > 0 else (0.0 if dmax == 0 else math.inf)
    where = ""
    if ref.dim() == 4:  # worst head: [L, H, T, T]
        l, h, i, j = (int(x) for x in torch.unravel_index(d.argmax(), d.shape))
        where = f"  worst L{l}H{h}[{i},{j}]"
    print(f"  {name:20s} max|Δ| {dmax:10.3e}  max|ref| {rmax:10.3e}  relative {rel:10.3e}{where}")
    return rel, name


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    model_dir = Path(argv[1])
    model = load_model(model_dir)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    failures = []
    for maps_dir in map(Path, argv[2:]):
        path = maps_dir / "maps.safetensors" if maps_dir.is_dir() else maps_dir
        got, meta = read_maps(path)
        ids, tids, fids, last = encode(tok, meta)
        print(f"{path}: loss={meta['loss']} bos={meta['bos']} T={len(ids)} prompt={meta['prompt'][:40]!r}…"
              f" target={meta['target']!r} foil={meta.get('foil', '')!r}")
        if got["input_ids"].tolist() != ids:
            print(f"  input_ids differ: revattn {got['input_ids'].tolist()[:12]}… vs reference {ids[:12]}…")
            failures.append(f"{path}: input_ids")
            continue
        ref = reference(model, ids, meta["loss"], last, tids, fids)
        for name in ref:
            if name not in got:
                print(f"  {name:20s} missing")
                failures.append(f"{path}: {name} missing")
                continue
            rel, _ = compare(name, got[name], ref[name])
            if not rel <= TOL:
                failures.append(f"{path}: {name} {rel:.2e}")
    if failures:
        print(f"FAIL ({len(failures)} over 1e-4 relative): " + "; ".join(failures))
        return 1
    print("OK (all ≤ 1e-4 relative)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
