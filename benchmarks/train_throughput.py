"""Training images/s of the conv autoencoder at 64x64, batch 64, side by side in one run.

Variants: fp32 NCHW, fp32 channels_last, bf16 autocast + channels_last (with the loss
difference to fp32 on the same batches as the accuracy check). On a GPU (when one is
present) the same variants run there too.

    python benchmarks/train_throughput.py [--steps 30] [--size 64] [--batch 64]
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import markdown_table, write_results


def measure(device: str, channels_last: bool, bf16: bool, steps: int, size: int, batch: int, seed: int = 0,
            channels=None):
    from deepfield.models import ConvAutoencoder, ConvAutoencoderConfig

    torch.manual_seed(seed)
    cfg = ConvAutoencoderConfig(input_shape=(1, size, size), latent_dim=16)
    if channels:
        cfg = ConvAutoencoderConfig(input_shape=(1, size, size), latent_dim=16, channels=tuple(channels))
    model = ConvAutoencoder(cfg).to(device)
    g = torch.Generator().manual_seed(seed)
    data = [torch.rand(batch, 1, size, size, generator=g).to(device) for _ in range(4)]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        data = [d.contiguous(memory_format=torch.channels_last) for d in data]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dtype = torch.bfloat16
    losses = []

    def step(i):
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=bf16):
            loss = model.loss({"x": data[i % len(data)]}).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)

    for i in range(3):  # warm-up
        step(i)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        losses.append(step(i))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    return {"images_per_s": steps * batch / seconds, "final_loss": losses[-1], "params": params}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--channels", type=int, nargs="+", help="conv channels per resolution (default: the model default)")
    args = ap.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    variants = [("fp32", False, False), ("fp32 channels_last", True, False), ("bf16 channels_last", True, True)]
    rows, results = [], []
    for device in devices:
        base = None
        for name, cl, bf16 in variants:
            r = measure(device, cl, bf16, args.steps, args.size, args.batch, channels=args.channels)
            base = base or r
            r.update(device=device, variant=name, speedup=r["images_per_s"] / base["images_per_s"],
                     loss_vs_fp32=r["final_loss"] / base["final_loss"] - 1)
            results.append(r)
            rows.append([device, name, round(r["images_per_s"], 1), round(r["speedup"], 2),
                         f"{100 * r['loss_vs_fp32']:+.2f}%"])
    table = markdown_table(["device", "variant", "images/s", "speed-up", "loss vs fp32 after N steps"], rows)
    write_results("train_throughput", {"channels": args.channels, "size": args.size, "batch": args.batch, "steps": args.steps,
                                       "params": results[0]["params"], "results": results}, table)


if __name__ == "__main__":
    main()
