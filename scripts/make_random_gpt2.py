#!/usr/bin/env python3
"""Writes a randomly initialised HF GPT-2 (GPT2LMHeadModel) for testing revattn at real sizes.

    python3 scripts/make_random_gpt2.py --config gpt2|gpt2-medium|gpt2-large|gpt2-xl|L,H,C --out DIR
                                        [--seed S] [--tokenizer PATH] [--peaked [--qk-scale X]] [--prefixed]

DIR gets config.json, model.safetensors (float32) and tokenizer.json (copied from --tokenizer, default
/work/shared/data/gpt2-tokenizer/tokenizer.json; vocab_size is the tokenizer's, 50257 for GPT-2).
Weights follow HF's own init (torch.manual_seed(S) then GPT2LMHeadModel(config): N(0, 0.02), residual
projections N(0, 0.02/sqrt(2L)), LayerNorm 1/0, biases 0).

--peaked   makes attention peaked and every parameter non-trivial so that bugs can't hide: the Q and K
           column blocks of every c_attn weight are multiplied by --qk-scale (default 100/sqrt(C), which
           gives pre-softmax scores of std ≈ 4 at any width: ≈3.6 for C=768, ≈10.5 for C=90), LayerNorm
           weights become 1+0.2·N(0,1), LayerNorm biases 0.1·N(0,1), all other biases 0.05·N(0,1).
--prefixed saves with save_pretrained (keys "transformer.h.0…", lm_head tied and not stored). Default:
           the hub layout of the original gpt2 checkpoints (keys "h.0…", no lm_head), written with
           safetensors.torch.save_file.

Requires: torch, transformers (5.x tested), tokenizers, safetensors. CPU only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import GPT2Config, GPT2LMHeadModel

SIZES = {  # name: (n_layer, n_head, n_embd)
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
}
DEFAULT_TOKENIZER = "/work/shared/data/gpt2-tokenizer/tokenizer.json"
EOT = "<|endoftext|>"
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()


def parse_size(s: str) -> tuple[int, int, int]:
    if s in SIZES:
        return SIZES[s]
    try:
        L, H, C = (int(x) for x in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(SIZES)} or L,H,C; got {s!r}")
    if min(L, H, C) <= 0 or C % H:
        raise argparse.ArgumentTypeError(f"need L, H, C > 0 and C divisible by H; got {s!r}")
    return L, H, C


@torch.no_grad()
def make_peaked(model: GPT2LMHeadModel, qk_scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed + 1_000_003)

    def noise(p: torch.Tensor, std: float, mean: float = 0.0) -> None:
        p.copy_(mean + std * torch.randn(p.shape, generator=g, dtype=torch.float32))

    C = model.config.n_embd
    for name, p in model.transformer.named_parameters():
        if ".ln_" in name or name.startswith("ln_f."):
            if name.endswith(".weight"):
                noise(p, 0.2, 1.0)
            else:
                noise(p, 0.1)
        elif name.endswith(".bias"):
            noise(p, 0.05)
        elif name.endswith("attn.c_attn.weight"):
            p[:, : 2 * C] *= qk_scale  # Conv1D [C, 3C]: columns Q | K | V


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, type=parse_size, help="gpt2[-medium|-large|-xl] or L,H,C")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", type=Path, default=Path(DEFAULT_TOKENIZER))
    ap.add_argument("--peaked", action="store_true")
    ap.add_argument("--qk-scale", type=float, default=None, help="with --peaked; default 100/sqrt(C)")
    ap.add_argument("--prefixed", action="store_true", help="save_pretrained layout (transformer.* keys)")
    args = ap.parse_args()
    L, H, C = args.config

    tok = Tokenizer.from_file(str(args.tokenizer))
    vocab, eot = tok.get_vocab_size(with_added_tokens=True), tok.token_to_id(EOT)
    cfg = GPT2Config(vocab_size=vocab, n_positions=1024, n_embd=C, n_layer=L, n_head=H,
                     activation_function="gelu_new", layer_norm_epsilon=1e-5, bos_token_id=eot,
                     eos_token_id=eot, tie_word_embeddings=True)
    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(cfg).eval()
    qk = args.qk_scale if args.qk_scale is not None else 100.0 / math.sqrt(C)
    if args.peaked:
        make_peaked(model, qk, args.seed)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr(), "lm_head not tied"

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.prefixed:
        model.save_pretrained(str(out), safe_serialization=True)
        (out / "generation_config.json").unlink(missing_ok=True)
    else:
        cfg.save_pretrained(str(out))
        params = dict(model.transformer.named_parameters())  # parameters only: no attn.bias buffers
        save_file({k: v.detach().to(torch.float32).contiguous() for k, v in params.items()},
                  str(out / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(out / "model.safetensors", 0o644)  # both writers leave it 0600
    shutil.copyfile(args.tokenizer, out / "tokenizer.json")

    conf = json.loads((out / "config.json").read_text())
    want = dict(n_layer=L, n_head=H, n_embd=C, n_positions=1024, vocab_size=vocab,
                activation_function="gelu_new", layer_norm_epsilon=1e-5)
    bad = {k: conf.get(k) for k, v in want.items() if conf.get(k) != v}
    assert not bad, f"config.json: {bad}"
    n = sum(p.numel() for p in model.transformer.parameters())
    print(f"wrote {out}: L={L} H={H} C={C} hs={C // H} vocab={vocab} params={n / 1e6:.1f}M "
          f"layout={'transformer.*' if args.prefixed else 'hub'} "
          f"{f'peaked (qk×{qk:.3g})' if args.peaked else 'HF init'} seed={args.seed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
