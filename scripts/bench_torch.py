#!/usr/bin/env python3
"""PyTorch (CPU) baseline for `revattn bench`: Reversed-Attention latency and batched forward throughput.

    python3 scripts/bench_torch.py --model DIR [--seq 16,64,256] [--runs 5] [--batch 32]
                                   [--threads 2] [--device cpu|cuda] [--json FILE]
                                   [--styles official,activations,activations-last]

DIR is an HF GPT-2 directory (config.json + model.safetensors), e.g. one written by
`revattn init --config gpt2 --out DIR`; the weights do not change the timings. This is the baseline
that docs/BENCHMARKS.md compares revattn against. The speed issue's targets: revattn's RA latency
≤ 1.0× "torch official" at T = 64 and ≤ 1.5× at T = 256.

What is measured (float32, model.eval(), torch.set_num_threads(--threads), on the CPU or, with
--device cuda, on the first CUDA GPU: the model and every tensor there, the device synchronized
before each clock reading, R copied to the host inside the timed run as revattn reads it back):

1. RA latency for one prompt, all L·NH heads, the `nll` loss −Σ log p(target) at the last prompt
   position with one target token. The prompt is exactly the one `revattn bench` uses: T token ids
   from the same xorshift64 generator (fixed seed 0x2545f4914f6cdd1d), target id vocab_size / 3.
   One run = the forward pass (with A for every head), the loss, the backward pass and
   R = A ⊙ (G_h·V_hᵀ − rowsum(A ⊙ G_h·V_hᵀ)) / √hs for every layer and head (PAPER.md §1.2),
   ending with R as one host tensor [L, NH, T, T] — the same work as revattn's `Engine::run` with
   R read back. "cold" is the first run at that T (in that style); "warm" is the median (and min) of
   the next --runs runs. Styles:
   - official: what the paper's code does. HF GPT2LMHeadModel (attn_implementation="eager"),
     every parameter requires grad, output_attentions=True gives A, a forward hook on each layer's
     attn.c_attn keeps V, a register_full_backward_hook on each layer's attn.c_proj captures
     G = ∂L/∂(c_proj input); logits for all T positions; model.zero_grad(set_to_none=True), then
     loss.backward() computes every weight gradient (lm_head/wte included), as the official code
     does. (The official code also takes an SGD step, which has nothing to do with RA: left out.
     It computes R head by head in Python; here it is one batched matmul per layer, which is
     slightly faster — a conservative baseline.)
   - activations: the same call, but every parameter frozen (requires_grad False) and the ids fed
     as inputs_embeds (wte lookup inside the timed region) with requires_grad=True, so backward
     computes activation gradients only — the work revattn's RA pass does.
   - activations-last: as activations, plus logits_to_keep=1 (the lm_head on the last row only, as
     revattn does for `nll`): the cheapest way to get R with stock HF + autograd.
   Per run the forward (model call + loss), backward and R stages are timed too (medians shown).
   For one T (64 if listed, else the first), R from every style is compared against the official
   style's R (max|ΔR| / max|R|) so that the faster styles are known to compute the same thing.
2. Batched forward throughput: --batch prompts of lengths drawn uniformly from [T/2, T], T = 64
   (fixed seed), random ids, right-padded to T with an attention_mask, torch.no_grad; one run =
   the transformer body on [B, T] + the lm_head on each prompt's last real position ([B, vocab]
   logits), like revattn's batched forward (which runs the lm_head on gathered target rows).
   Timed with eager attention (the official code's transformers 4.40.1 used eager for GPT-2) and
   with SDPA (today's HF default). prompts/s = B / warm median.
3. Peak RSS (resource.getrusage ru_maxrss) after loading and after each section. It includes
   torch's allocator caches, the model, and the gradients of the official style (one copy of the
   weights' size).

Output: a table on stdout; with --json FILE, every number (each run's time included).
Exit status 2 on bad arguments or a model directory that cannot be loaded.
Requires torch and transformers (tested with torch 2.15, transformers 5.24).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

PROG = "bench_torch.py"
SEED = 0x2545_F491_4F6C_DD1D  # revattn bench's synthetic_sequence seed
MASK64 = (1 << 64) - 1
STYLES = ("official", "activations", "activations-last")
BATCH_T = 64
BATCH_SEED = 0


def fail(msg: str) -> "NoReturn":  # noqa: F821
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="PyTorch CPU baseline for `revattn bench` (RA latency, batched forward throughput).",
    )
    p.add_argument("--model", required=True, help="HF GPT-2 directory (config.json, model.safetensors)")
    p.add_argument("--seq", default="16,64,256", help="comma-separated prompt lengths T (default 16,64,256)")
    p.add_argument("--runs", type=int, default=5, help="warm runs per measurement (default 5)")
    p.add_argument("--batch", type=int, default=32, help="prompts in the batched forward (default 32; 0 skips it)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where torch runs (default cpu)")
    p.add_argument("--json", type=Path, help="write every number to this JSON file")
    p.add_argument(
        "--styles",
        default=",".join(STYLES),
        help=f"comma-separated RA styles to time (default {','.join(STYLES)})",
    )
    args = p.parse_args(argv)
    try:
        args.seq = [int(s) for s in args.seq.split(",") if s.strip()]
    except ValueError:
        fail(f"--seq: expected comma-separated integers, got {args.seq!r}")
    if not args.seq:
        fail("--seq is empty")
    args.styles = [s.strip() for s in args.styles.split(",") if s.strip()]
    bad = [s for s in args.styles if s not in STYLES]
    if bad or not args.styles:
        fail(f"--styles: unknown {bad} (choose from {', '.join(STYLES)})")
    if args.runs < 1:
        fail("--runs must be at least 1")
    if args.batch < 0:
        fail("--batch must be ≥ 0")
    if args.threads < 1:
        fail("--threads must be at least 1")
    return args


# ---------------------------------------------------------------- machine / environment


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parallel_summary(torch) -> str:
    """One line from torch.__config__.parallel_info(): backend, OpenMP, MKL, oneDNN, threads."""
    parts = []
    info = torch.__config__.parallel_info().splitlines()
    for line in info:
        s = line.strip()
        if s.startswith("ATen parallel backend:"):
            parts.insert(0, "ATen " + s.split(":", 1)[1].strip())
        elif s.startswith("OpenMP ") or s.startswith("Intel(R) MKL-DNN") or s.startswith("oneDNN"):
            parts.append(s.split(" (", 1)[0] if s.startswith("OpenMP") else s.split(" (Git", 1)[0])
        elif "Math Kernel Library" in s:
            ver = s.split("Version", 1)[1].split("-", 1)[0].strip() if "Version" in s else "?"
            parts.append(f"MKL {ver}")
    parts.append(f"threads {torch.get_num_threads()} intra / {torch.get_num_interop_threads()} inter-op")
    return "; ".join(parts)


def peak_rss_mib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024.0 if sys.platform != "darwin" else kib / 2**20


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# ---------------------------------------------------------------- inputs


def synthetic_ids(t: int, vocab: int) -> list[int]:
    """revattn bench's prompt: xorshift64 (13, 7, 17) from SEED, each value mod vocab."""
    x, ids = SEED, []
    for _ in range(t):
        x ^= (x << 13) & MASK64
        x ^= x >> 7
        x ^= (x << 17) & MASK64
        ids.append(x % vocab)
    return ids


def check_model_dir(model_dir: Path) -> None:
    """Cheap checks before torch is imported, so that a wrong path fails fast with one line."""
    if not model_dir.is_dir():
        fail(f"--model {model_dir}: not a directory")
    if not (model_dir / "config.json").is_file():
        fail(f"--model {model_dir}: no config.json")
    if not any((model_dir / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
        fail(f"--model {model_dir}: no model.safetensors")
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        fail(f"--model {model_dir}: config.json unreadable ({e})")
    if cfg.get("model_type", "gpt2") != "gpt2":
        fail(f"--model {model_dir}: model_type is {cfg.get('model_type')!r}, not 'gpt2'")


def load_model(model_dir: Path, device: str):
    import torch
    from transformers import GPT2LMHeadModel

    try:
        model = GPT2LMHeadModel.from_pretrained(
            str(model_dir), attn_implementation="eager", dtype=torch.float32
        )
    except Exception as e:  # noqa: BLE001 — any load failure is a bad model directory
        msg = " ".join(str(e).split())
        fail(f"--model {model_dir}: cannot load GPT-2 ({type(e).__name__}: {msg[:200]})")
    return model.to(device).eval()


def synchronizer(torch, device: str):
    """Waits for the device's queued work (CUDA runs asynchronously): call before reading a clock."""
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


# ---------------------------------------------------------------- RA latency


class RaRunner:
    """Hooks on every layer (V from attn.c_attn's output, G at attn.c_proj's input) and one timed RA run."""

    def __init__(self, model, torch, device: str):
        self.model, self.torch = model, torch
        self.sync = synchronizer(torch, device)
        cfg = model.config
        self.L, self.NH, self.C = cfg.n_layer, cfg.n_head, cfg.n_embd
        self.hs = self.C // self.NH
        self.V = [None] * self.L
        self.G = [None] * self.L
        C = self.C
        self.handles = []
        for l, blk in enumerate(model.transformer.h):
            self.handles.append(blk.attn.c_attn.register_forward_hook(
                lambda mod, a, out, l=l: self.V.__setitem__(l, out.detach()[0, :, 2 * C : 3 * C])
            ))
            self.handles.append(blk.attn.c_proj.register_full_backward_hook(
                lambda mod, gin, gout, l=l: self.G.__setitem__(l, gin[0].detach()[0])
            ))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def set_style(self, style: str) -> None:
        for p in self.model.parameters():
            p.requires_grad_(style == "official")
        self.model.zero_grad(set_to_none=True)

    def run(self, style: str, ids, target: int):
        """One RA run. Returns (R [L, NH, T, T], forward s, backward s, R s)."""
        torch, model, sync = self.torch, self.model, self.sync
        sync()
        t0 = time.perf_counter()
        if style == "official":
            model.zero_grad(set_to_none=True)
            out = model(input_ids=ids, output_attentions=True, use_cache=False)
        else:
            emb = model.transformer.wte(ids).detach().requires_grad_(True)
            keep = 1 if style == "activations-last" else 0  # 0 = all positions
            out = model(inputs_embeds=emb, output_attentions=True, use_cache=False, logits_to_keep=keep)
        logits_last = out.logits[0, -1]
        loss = -torch.log_softmax(logits_last, dim=-1)[target]
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        L, NH, hs = self.L, self.NH, self.hs
        T = ids.shape[1]
        R = torch.empty(L, NH, T, T, device=ids.device)
        scale = 1.0 / math.sqrt(hs)
        with torch.no_grad():
            for l in range(L):
                A = out.attentions[l][0]  # [NH, T, T]
                G = self.G[l].view(T, NH, hs).transpose(0, 1)  # [NH, T, hs]
                V = self.V[l].reshape(T, NH, hs).transpose(0, 1)
                dA = torch.matmul(G, V.transpose(1, 2))  # ∂L/∂A, [NH, T, T]
                R[l] = A * (dA - (A * dA).sum(-1, keepdim=True)) * scale
            R = R.cpu()  # one host tensor (a no-op on the CPU)
        t3 = time.perf_counter()
        self.V = [None] * L
        self.G = [None] * L
        return R, t1 - t0, t2 - t1, t3 - t2


def bench_ra(model, torch, args) -> tuple[list[dict], dict | None]:
    cfg = model.config
    vocab = cfg.vocab_size
    target = vocab // 3
    runner = RaRunner(model, torch, args.device)
    check_t = 64 if 64 in args.seq else args.seq[0]
    rows, check = [], None
    print(
        f"\nRA latency: forward + backward + R for all {cfg.n_layer * cfg.n_head} heads, nll loss "
        f"(target id {target}), cold run + {args.runs} warm runs"
    )
    hdr = f"{'style':<17} {'T':>5} {'cold ms':>10} {'warm med ms':>12} {'min ms':>10} {'fwd ms':>9} {'bwd ms':>9} {'R ms':>8} {'RSS MiB':>8}"
    print(hdr)
    for t in args.seq:
        ids = torch.tensor([synthetic_ids(t, vocab)], dtype=torch.long, device=args.device)
        maps = {}
        for style in args.styles:
            runner.set_style(style)
            start = time.perf_counter()
            R, *_ = runner.run(style, ids, target)
            cold = (time.perf_counter() - start) * 1e3
            if t == check_t:
                maps[style] = R
            del R
            runs, fwd, bwd, ra = [], [], [], []
            for _ in range(args.runs):
                start = time.perf_counter()
                R, f, b, r = runner.run(style, ids, target)
                runs.append((time.perf_counter() - start) * 1e3)
                fwd.append(f * 1e3)
                bwd.append(b * 1e3)
                ra.append(r * 1e3)
                del R
            row = {
                "style": style,
                "seq": t,
                "cold_ms": cold,
                "warm_median_ms": median(runs),
                "warm_min_ms": min(runs),
                "runs_ms": runs,
                "forward_median_ms": median(fwd),
                "backward_median_ms": median(bwd),
                "ra_median_ms": median(ra),
                "peak_rss_mib": peak_rss_mib(),
            }
            rows.append(row)
            print(
                f"{style:<17} {t:>5} {row['cold_ms']:>10.1f} {row['warm_median_ms']:>12.1f} "
                f"{row['warm_min_ms']:>10.1f} {row['forward_median_ms']:>9.1f} "
                f"{row['backward_median_ms']:>9.1f} {row['ra_median_ms']:>8.2f} {row['peak_rss_mib']:>8.0f}"
            )
        runner.set_style("official")  # leave the model as loaded
        model.zero_grad(set_to_none=True)
        if maps:
            check = ra_check(maps, check_t)
    runner.remove()
    return rows, check


def ra_check(maps: dict, t: int) -> dict:
    ref_style = "official" if "official" in maps else next(iter(maps))
    ref = maps[ref_style]
    rmax = ref.abs().max().item()
    out = {"seq": t, "reference": ref_style, "max_abs_r": rmax, "row_sum_max_abs": 0.0, "styles": {}}
    out["row_sum_max_abs"] = ref.sum(-1).abs().max().item()
    print(
        f"R check at T = {t}: max|R| {rmax:.3e} ({ref_style}), max|row sum| {out['row_sum_max_abs']:.1e}"
        + ("" if len(maps) > 1 else " (one style only: nothing to compare)")
    )
    if rmax == 0.0:
        print("  warning: R is all zero; the comparison below says nothing")
    for style, R in maps.items():
        if style == ref_style:
            continue
        d = (R - ref).abs().max().item()
        rel = d / rmax if rmax > 0 else (0.0 if d == 0 else math.inf)
        out["styles"][style] = {"max_abs_diff": d, "max_rel_diff": rel}
        print(f"  {style:<17} vs {ref_style}: max|ΔR| {d:.3e}, max rel diff {rel:.3e}")
    return out


# ---------------------------------------------------------------- batched forward


def bench_batched(model, torch, args) -> list[dict]:
    cfg = model.config
    B, T = args.batch, min(BATCH_T, cfg.n_positions)
    gen = torch.Generator().manual_seed(BATCH_SEED)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=gen)
    lengths = lengths.clamp(min=1)
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    ids = ids * mask  # right padding with id 0 (masked out anyway)
    last = lengths - 1
    ids, mask, last = ids.to(args.device), mask.to(args.device), last.to(args.device)
    sync = synchronizer(torch, args.device)
    rows = []
    print(
        f"\nBatched forward: B = {B} prompts, lengths {int(lengths.min())}..{int(lengths.max())} "
        f"(mean {lengths.float().mean().item():.1f}) right-padded to T = {T}, lm_head on each last "
        f"position, no_grad, cold run + {args.runs} warm runs"
    )
    print(f"{'attention':<10} {'cold ms':>10} {'warm med ms':>12} {'min ms':>10} {'prompts/s':>10} {'RSS MiB':>8}")
    for p in model.parameters():
        p.requires_grad_(False)
    for impl in ("eager", "sdpa"):
        try:
            model.set_attn_implementation(impl)
        except Exception as e:  # noqa: BLE001
            print(f"{impl:<10} unavailable ({type(e).__name__}: {' '.join(str(e).split())[:100]})")
            continue

        def once():
            with torch.no_grad():
                h = model.transformer(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                logits = model.lm_head(h[torch.arange(B, device=h.device), last])  # [B, vocab]
            sync()
            return logits

        start = time.perf_counter()
        once()
        cold = (time.perf_counter() - start) * 1e3
        runs = []
        for _ in range(args.runs):
            start = time.perf_counter()
            once()
            runs.append((time.perf_counter() - start) * 1e3)
        med = median(runs)
        row = {
            "attention": impl,
            "batch": B,
            "t": T,
            "lengths": lengths.tolist(),
            "cold_ms": cold,
            "warm_median_ms": med,
            "warm_min_ms": min(runs),
            "runs_ms": runs,
            "prompts_per_s": B / (med / 1e3),
            "peak_rss_mib": peak_rss_mib(),
        }
        rows.append(row)
        print(
            f"{impl:<10} {cold:>10.1f} {med:>12.1f} {row['warm_min_ms']:>10.1f} "
            f"{row['prompts_per_s']:>10.1f} {row['peak_rss_mib']:>8.0f}"
        )
    model.set_attn_implementation("eager")
    for p in model.parameters():
        p.requires_grad_(True)
    return rows


# ---------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    model_dir = Path(args.model)
    check_model_dir(model_dir)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rss_import = peak_rss_mib()
    t0 = time.perf_counter()
    if args.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: torch sees no CUDA GPU")
    model = load_model(model_dir, args.device)
    load_ms = (time.perf_counter() - t0) * 1e3
    cfg = model.config
    if bad := [t for t in args.seq if not 1 <= t <= cfg.n_positions]:
        fail(f"--seq {bad[0]} is outside 1..={cfg.n_positions} (n_positions)")
    n_params = sum(p.numel() for p in model.parameters())
    par = parallel_summary(torch)
    cpu = f"{cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system().lower()}"
    print(f"machine  {cpu}")
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    if gpu:
        print(f"device   {gpu} (CUDA {torch.version.cuda})")
    print(f"torch    {torch.__version__} (transformers {transformers.__version__}, Python {platform.python_version()})")
    print(f"parallel {par}")
    print(
        f"model    {model_dir} (L={cfg.n_layer} NH={cfg.n_head} C={cfg.n_embd} V={cfg.vocab_size}, "
        f"{n_params / 1e6:.1f} M parameters, float32); load {load_ms:.0f} ms"
    )
    print(f"RSS      {rss_import:.0f} MiB after importing torch + transformers, {peak_rss_mib():.0f} MiB after load")
    rss_load = peak_rss_mib()
    ra_rows, check = bench_ra(model, torch, args)
    batched = bench_batched(model, torch, args) if args.batch > 0 else []
    rss_end = peak_rss_mib()
    print(f"\npeak RSS {rss_end:.0f} MiB (after imports {rss_import:.0f} MiB, after load {rss_load:.0f} MiB)")
    if args.json:
        doc = {
            "tool": PROG,
            "machine": cpu,
            "cpu": cpu_model(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "parallel": par,
            "threads": args.threads,
            "device": args.device,
            "gpu": gpu,
            "model": str(model_dir),
            "config": {
                "n_layer": cfg.n_layer,
                "n_head": cfg.n_head,
                "n_embd": cfg.n_embd,
                "vocab_size": cfg.vocab_size,
                "n_positions": cfg.n_positions,
                "parameters": n_params,
            },
            "load_ms": load_ms,
            "runs": args.runs,
            "loss": "nll",
            "target_id": cfg.vocab_size // 3,
            "ra_latency": ra_rows,
            "ra_check": check,
            "batched": batched,
            "peak_rss_after_import_mib": rss_import,
            "peak_rss_after_load_mib": rss_load,
            "peak_rss_mib": rss_end,
        }
        tmp = args.json.with_name(args.json.name + ".tmp")
        try:
            tmp.write_text(json.dumps(doc, indent=2) + "\n")
            tmp.replace(args.json)
        except OSError as e:
            fail(f"--json {args.json}: {e}")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
