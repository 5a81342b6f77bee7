"""Benchmark: HoVer-Net training-step speed (forward + backward + Adam) per precision.

The reference is fp32 in the same run on the same model and random batch; the
variants are bf16 autocast and bf16 autocast + channels_last on the CPU, and
fp32 / bf16 / fp16 (with a grad scaler) / bf16 + channels_last on CUDA when a
GPU is present. Images per second are measured over ``--steps`` steps after
``--warmup`` steps (the first steps build oneDNN / cuDNN kernels).

    python benchmarks/train_speed.py [--encoder=resnet50] [--mode=original] [--batch_size=4]
        [--steps=3] [--warmup=1] [--cuda_batch_size=16] [--decoder_width=1.0] [--no_cpu]
        [--out=bench_out/train_speed.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hovercrypt.config import LossWeights, ModelConfig  # noqa: E402
from hovercrypt.io.atomic import atomic_write_text  # noqa: E402
from hovercrypt.models import build_model, count_parameters  # noqa: E402
from hovercrypt.models.losses import hovernet_loss  # noqa: E402


def make_batch(model: torch.nn.Module, n: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    o = model.output_size
    fg = (torch.rand(n, o, o, generator=g) > 0.5).long()
    batch = {
        "image": torch.rand(n, 3, model.input_size, model.input_size, generator=g),
        "np": fg,
        "hv": torch.rand(n, 2, o, o, generator=g) * 2 - 1,
        "tp": fg * torch.randint(1, 3, (n, 1, 1), generator=g),
    }
    return {k: v.to(device) for k, v in batch.items()}


def run_variant(
    cfg: ModelConfig,
    device: torch.device,
    dtype: torch.dtype | None,
    channels_last: bool,
    args,
    batch_size: int,
) -> dict:
    """Images/second of full training steps; a fresh model per variant so they are independent."""
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    batch = make_batch(model, batch_size, device)
    x = batch["image"].contiguous(memory_format=torch.channels_last) if channels_last else batch["image"]
    amp = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def step() -> float:
        with amp:
            out = model(x)
            loss, _ = hovernet_loss(out, batch, LossWeights())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return float(loss.detach())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    sync()
    t0 = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    sync()
    dt = time.perf_counter() - t0
    return {
        "seconds_per_step": dt / args.steps,
        "images_per_second": batch_size * args.steps / dt,
        "batch_size": batch_size,
        "last_loss": losses[-1],
    }


def variants(device: torch.device) -> list[tuple[str, torch.dtype | None, bool]]:
    if device.type == "cpu":
        out: list[tuple[str, torch.dtype | None, bool]] = [("fp32", None, False)]
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            out += [("bf16", torch.bfloat16, False), ("bf16+channels_last", torch.bfloat16, True)]
        else:
            print("note: this CPU has no fast bf16 support; bf16 variants skipped")
        return out
    out = [("fp32", None, False), ("bf16", torch.bfloat16, False), ("fp16", torch.float16, False)]
    return out + [("bf16+channels_last", torch.bfloat16, True)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="resnet50")
    ap.add_argument("--mode", default="original", choices=["original", "fast"])
    ap.add_argument("--decoder_width", type=float, default=1.0)
    ap.add_argument("--batch_size", type=int, default=4, help="CPU batch size")
    ap.add_argument("--cuda_batch_size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no_cpu", action="store_true", help="only benchmark CUDA")
    ap.add_argument("--out", default=str(REPO / "bench_out" / "train_speed.json"))
    args = ap.parse_args(argv)

    cfg = ModelConfig(encoder=args.encoder, mode=args.mode, decoder_width=args.decoder_width)
    devices = [] if args.no_cpu else [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    params = count_parameters(build_model(cfg))
    results: dict = {
        "encoder": args.encoder,
        "mode": args.mode,
        "decoder_width": args.decoder_width,
        "parameters": params,
        "steps": args.steps,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "devices": {},
    }
    print(f"HoVer-Net {args.encoder} {args.mode} width {args.decoder_width}: {params / 1e6:.1f} M parameters")
    print(f"{'device':<24} {'variant':<20} {'batch':>5} {'s/step':>8} {'img/s':>8} {'vs fp32':>8}")
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        bs = args.cuda_batch_size if device.type == "cuda" else args.batch_size
        rows: dict = {}
        for label, dtype, cl in variants(device):
            try:
                r = run_variant(cfg, device, dtype, cl, args, bs)
            except torch.OutOfMemoryError:
                print(f"{name:<24} {label:<20} out of memory at batch {bs}; lower --cuda_batch_size")
                torch.cuda.empty_cache()
                continue
            ref = rows.get("fp32", r)
            r["ratio_to_fp32"] = r["images_per_second"] / ref["images_per_second"]
            rows[label] = r
            print(
                f"{name:<24} {label:<20} {bs:>5} {r['seconds_per_step']:>8.3f} "
                f"{r['images_per_second']:>8.2f} {r['ratio_to_fp32']:>7.2f}x",
                flush=True,
            )
        results["devices"][f"{device.type}:{name}"] = rows
    atomic_write_text(args.out, json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
