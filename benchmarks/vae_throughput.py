"""VAE training images/s: deepfield vs pythae 0.1.2, same architecture, data and batch; and
flow-VAE sampling galaxies/s.

Both libraries train the same network, deepfield's convolutional encoder and decoder
(deepfield.nn.ConvEncoder / ConvDecoder, wrapped as pythae BaseEncoder / BaseDecoder), with a
Gaussian (MSE) likelihood, Adam, batch 64, on the same simulated 64x64 galaxies (the train
split, normalised the same way), in one process one after the other. pythae runs the layers as
it runs any user's network, in PyTorch's default NCHW layout; the channels-last activations
deepfield's stacks use are deepfield's own engineering, so the wrapper calls the same layers
without them. Throughput is the
training loop's wall time per epoch (data loading + steps), from the first batch to the last,
over every epoch after the first (warm-up). pythae's autocast is CUDA-only, so on a CPU it
runs in fp32; deepfield runs in its default fp32 and, as a separate row, with bf16 autocast.
Each row also gives the validation loss after the same epochs (nats per pixel), to show bf16
learns as well as fp32.

Sampling: a 'pixel'-likelihood VAE (PSF + noise, deconvolved decoder) with a neural-spline
latent flow prior conditional on half_light_radius, magnitude, redshift; galaxies/s of
``model.sample`` (noiseless, PSF-free 64x64 stamps), batch 1,000, decoded in fp32 and in bf16.

The arithmetic column divides each row's FLOP rate (the network's FLOPs per image, counted by
torch, times images/s) by the rate at which this CPU multiplies large matrices in the same
precision: how close to the machine's ceiling the loop runs, and what a target would need (the
network's FLOPs only: the pixel likelihood's PSF convolutions by FFT are extra work not counted).

The machine's speed drifts by 10% or more over minutes, so the libraries take turns: each of
--repeats rounds runs pythae, deepfield fp32, deepfield bf16 and deepfield's observation-model
('pixel') likelihood in fp32 one after the other, each round
gives its own ratios, and the table reports the median round's images/s and ratios with the
range over rounds.

    pip install pythae==0.1.2    # not a deepfield dependency; installs beside torch 2.13
    python benchmarks/vae_throughput.py [--n 2560] [--epochs 3] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import cached_store, markdown_table, write_results

SIZE = 64


class EpochClock:
    """Wall time of each epoch's training loop: first batch start to last batch end."""

    def __init__(self):
        self.start = None
        self.last = None
        self.epochs = []  # (seconds, images)
        self.images = 0

    def begin(self):
        if self.start is not None and self.last is not None:
            self.epochs.append((self.last - self.start, self.images))
        self.start, self.last, self.images = time.perf_counter(), None, 0

    def batch_end(self, n: int):
        self.last = time.perf_counter()
        self.images += n

    def finish(self):
        self.begin()

    def images_per_s(self) -> float:
        steady = self.epochs[1:] or self.epochs  # the first epoch is warm-up
        return sum(i for _, i in steady) / sum(s for s, _ in steady)


def lightning_clock(clock: EpochClock):
    import lightning as L

    class Clock(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            clock.begin()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.batch_end(int(batch["x"].shape[0]))

        def on_train_end(self, trainer, pl_module):
            clock.finish()

    return Clock()


def run_deepfield(store, epochs: int, batch: int, precision: str, likelihood: str, work: Path, seed: int = 0):
    from deepfield.train import TrainSettings, train

    clock = EpochClock()
    out = work / f"deepfield-{likelihood}-{precision}"
    train("vae", store, out, model_options={"likelihood": likelihood, "latent_dim": 16},
          settings=TrainSettings(epochs=epochs, batch_size=batch, lr=1e-3, seed=seed, patience=0, precision=precision,
                                 progress=False, split_fractions=(0.8, 0.2)),
          callbacks=[lightning_clock(clock)], overwrite=True)
    import deepfield

    import json

    model = deepfield.load(out)
    params = sum(p.numel() for n, p in model.named_parameters() if n != "log_sigma")
    val_loss = json.loads((out / "metrics.json").read_text())["best_val_loss"]
    return clock.images_per_s(), params, out, val_loss


def run_pythae(x: np.ndarray, epochs: int, batch: int, work: Path, seed: int = 0):
    from pythae.models import VAE as PVAE
    from pythae.models import VAEConfig as PVAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    from deepfield.models.vae import VAEConfig
    from deepfield.nn import ConvDecoder, ConvEncoder

    cfg = VAEConfig(input_shape=(1, SIZE, SIZE), latent_dim=16)

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = ConvEncoder(1, SIZE, 2 * cfg.latent_dim, cfg.channels, cfg.blocks, cfg.activation)

        def forward(self, x):
            h = self.net.features(torch.asinh(x))  # the same layers and input stretch as deepfield, NCHW
            mean, log_var = self.net.head(h.flatten(1)).chunk(2, dim=1)
            return ModelOutput(embedding=mean, log_covariance=log_var.clamp(-12, 8))

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = ConvDecoder(cfg.latent_dim, 1, SIZE, cfg.channels, cfg.blocks, cfg.activation)

        def forward(self, z):
            h = self.net.head(z).view(z.shape[0], self.net.start_channels, self.net.final, self.net.final)
            return ModelOutput(reconstruction=self.net.body(h))  # NCHW

    class Clock(TrainingCallback):
        def __init__(self, clock):
            self.clock = clock

        def on_train_step_begin(self, training_config, **kwargs):  # once per epoch, before its first batch
            self.clock.begin()

        def on_train_step_end(self, training_config, **kwargs):  # after every batch
            self.clock.batch_end(batch)

        def on_train_end(self, training_config, **kwargs):
            self.clock.finish()

    torch.manual_seed(seed)
    model = PVAE(PVAEConfig(input_dim=(1, SIZE, SIZE), latent_dim=cfg.latent_dim, reconstruction_loss="mse"),
                 encoder=Encoder(), decoder=Decoder())
    clock = EpochClock()
    config = BaseTrainerConfig(output_dir=str(work / "pythae"), per_device_train_batch_size=batch, num_epochs=epochs,
                               learning_rate=1e-3, seed=seed, no_cuda=True)
    n = len(x) - len(x) % batch  # whole batches only, as in deepfield's timing (last batch counted at its size)
    TrainingPipeline(training_config=config, model=model)(train_data=x[:n], callbacks=[Clock(clock)])
    params = sum(p.numel() for p in model.parameters())
    return clock.images_per_s(), params


def network_flops(batch: int) -> dict:
    """FLOPs of the network (convolutions and matrix products, counted by torch's FlopCounterMode)
    per training image (forward + backward) and per decoded galaxy."""
    from torch.utils.flop_counter import FlopCounterMode

    from deepfield.models.vae import VAE, VAEConfig

    model = VAE(VAEConfig(input_shape=(1, SIZE, SIZE), latent_dim=16))
    with FlopCounterMode(display=False) as count:
        model.loss({"x": torch.rand(batch, 1, SIZE, SIZE)}).loss.backward()
    train = count.get_total_flops() / batch
    with FlopCounterMode(display=False) as count, torch.no_grad():
        model.decode(torch.randn(batch, 16))
    return {"flops_per_training_image": train, "flops_per_decoded_galaxy": count.get_total_flops() / batch}


def matmul_rates() -> dict:
    """This CPU's fp32 and bf16 matrix-product rate (FLOP/s; 4096 x 4096, the threads set, the best
    of four products): the ceiling any library's training or sampling runs under. Measured once
    per round, since the machine's speed drifts; the table uses the best round's."""
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(4096, 4096, dtype=dtype), torch.randn(4096, 4096, dtype=dtype)
        a @ b
        best = float("inf")
        for _ in range(4):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        rates[name] = 2 * 4096**3 / best
    return rates


def sampling_rate(vae_dir: Path, n: int, batch: int, flow_epochs: int) -> dict:
    import deepfield
    from deepfield.train.prior import train_prior

    cond = ("half_light_radius", "magnitude", "redshift")
    train_prior(vae_dir, None, kind="nsf", condition=cond, epochs=flow_epochs, progress=False)
    model = deepfield.load(vae_dir)
    g = torch.Generator().manual_seed(0)
    condition = {"half_light_radius": torch.full((batch,), 0.5), "magnitude": torch.full((batch,), 22.0),
                 "redshift": torch.full((batch,), 0.7)}
    out = {"n": n, "batch": batch, "prior": type(model.prior).__name__, "condition": list(cond),
           "prior_config": {k: v for k, v in model.prior.record["config"].items() if k != "input_shape"}}
    for bf16 in (False, True):
        model.sample(batch, condition=condition, generator=g, bf16=bf16)  # warm-up
        t0 = time.perf_counter()
        done = 0
        while done < n:
            images = model.sample(batch, condition=condition, generator=g, bf16=bf16)
            done += images.shape[0]
        seconds = time.perf_counter() - t0
        assert torch.isfinite(images).all() and images.shape[-1] == SIZE
        out["galaxies_per_s_bf16" if bf16 else "galaxies_per_s"] = done / seconds
    # how far bf16 decoding moves the pixels: the same codes decoded both ways
    z = model.prior.sample(batch, condition=condition, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model.decode(z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model.decode(z).float()
    peak = full.flatten(1).amax(1)
    out["bf16_max_pixel_error_over_peak"] = float(((half - full).abs().flatten(1).amax(1) / peak).max())
    out["bf16_median_flux_error"] = float(((half.sum((1, 2, 3)) - full.sum((1, 2, 3))).abs() / full.sum((1, 2, 3))).median())
    with torch.no_grad():
        t0 = time.perf_counter()
        model.prior.sample(batch * 4, condition={k: v.repeat(4) for k, v in condition.items()}, generator=g)
        out["prior_codes_per_s"] = batch * 4 / (time.perf_counter() - t0)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2560, help="galaxies in the store (80%% train)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is warm-up)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of pythae / deepfield fp32 / bf16 / fp32 pixel in turn")
    ap.add_argument("--samples", type=int, default=10000, help="galaxies drawn for the sampling rate")
    ap.add_argument("--flow-epochs", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from deepfield.data.galaxies import simulate_galaxies

    store = cached_store(f"galaxies-{args.n}-64", lambda p: simulate_galaxies(
        p, args.n, size=SIZE, bands=("r",), seed=2, workers=2, progress=False))
    # pythae gets the deepfield train split, normalised as deepfield normalises it (pixel std)
    train_rows = np.sort(store.split((0.8, 0.2, 0.0), seed=0)["train"])
    x = store.read("x", train_rows).astype(np.float32)
    x /= x.std()
    rows, results = [], {}
    work_per = network_flops(args.batch)
    matmul = []  # the CPU's matrix-product rates, each round
    runs = (("deepfield fp32", "32-true", "gaussian"), ("deepfield bf16", "bf16-mixed", "gaussian"),
            ("deepfield fp32, pixel likelihood", "32-true", "pixel"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for round_ in range(args.repeats):  # the libraries take turns: a slow spell hits every row of a round
            matmul.append(matmul_rates())
            rate, params = run_pythae(x, args.epochs, args.batch, work)
            results.setdefault("pythae fp32", {"params": params, "rounds": []})["rounds"].append(rate)
            for name, precision, likelihood in runs:
                rate, params, out, val_loss = run_deepfield(store, args.epochs, args.batch, precision, likelihood, work)
                r = results.setdefault(name, {"params": params, "val_loss": val_loss, "rounds": []})
                r["rounds"].append(rate)
            print(f"round {round_ + 1}/{args.repeats}: " + ", ".join(
                f"{k} {v['rounds'][-1]:.1f}" for k, v in results.items()), flush=True)
        sampling = sampling_rate(out, args.samples, 1000, args.flow_epochs)  # the last round's pixel-likelihood VAE
    peak = {k: max(r[k] for r in matmul) for k in matmul[0]}
    work_per.update(matmul_flops_per_s=peak, matmul_flops_per_s_rounds=matmul)
    base = np.array(results["pythae fp32"]["rounds"])
    for name, r in results.items():
        rates = np.array(r["rounds"])
        ratios = rates / base  # round by round
        r.update(images_per_s=float(np.median(rates)), vs_pythae=float(np.median(ratios)),
                 vs_pythae_range=[float(ratios.min()), float(ratios.max())])
        spread = f" ({ratios.min():.2f}-{ratios.max():.2f})" if ratios.size > 1 and name != "pythae fp32" else ""
        precision = "bf16" if "bf16" in name else "fp32"
        r["fraction_of_matmul_rate"] = r["images_per_s"] * work_per["flops_per_training_image"] / peak[precision]
        rows.append([name, r["params"], round(r["images_per_s"], 1), f"{r['vs_pythae']:.2f}x{spread}",
                     f"{100 * r['fraction_of_matmul_rate']:.0f}% of {precision}",
                     f"{r['val_loss']:.4f}" if "val_loss" in r else "—"])
    for precision, key in (("fp32", "galaxies_per_s"), ("bf16", "galaxies_per_s_bf16")):
        fraction = sampling[key] * work_per["flops_per_decoded_galaxy"] / peak[precision]
        sampling[f"decoder_fraction_of_matmul_rate_{precision}"] = fraction
        rows.append([f"flow-VAE sampling, {precision} decoding (galaxies/s)", "", round(sampling[key], 1), "",
                     f"{100 * fraction:.0f}% of {precision} (decoder)", ""])
    table = markdown_table(["training (64x64, batch 64, same network)", "parameters", "images/s (median round)",
                            f"vs pythae (median, range over {args.repeats} rounds)",
                            "arithmetic rate / matrix-product rate", "val loss after the same epochs"], rows)
    need = 1.3 * results["pythae fp32"]["images_per_s"] * work_per["flops_per_training_image"] / peak["fp32"]
    table += (f"\n\nArithmetic: {work_per['flops_per_training_image'] / 1e9:.2f} GFLOP per training image (forward + "
              f"backward), {work_per['flops_per_decoded_galaxy'] / 1e6:.0f} MFLOP per decoded galaxy; this CPU multiplies "
              f"4096 x 4096 matrices (best of {args.repeats} rounds) at {peak['fp32'] / 1e9:.0f} GFLOP/s in fp32 and {peak['bf16'] / 1e9:.0f} in bf16. "
              f"1.3x pythae in fp32 would need the whole training loop to run at {100 * need:.0f}% of the fp32 rate; "
              f"1,000 galaxies/s in fp32 would need the decoder at "
              f"{100 * 1000 * work_per['flops_per_decoded_galaxy'] / peak['fp32']:.0f}% of it.")
    table += (f"\n\nSampling: conditional coupling-spline latent flow ({sampling['prior_codes_per_s']:.0f} codes/s alone) "
              f"+ decoder, batch {sampling['batch']}. bf16 decoding moves pixels by at most "
              f"{100 * sampling['bf16_max_pixel_error_over_peak']:.2f}% of a galaxy's peak; median flux error "
              f"{100 * sampling['bf16_median_flux_error']:.3f}%.")
    write_results("vae_throughput", {"n_train": int(len(train_rows)), "epochs": args.epochs, "batch": args.batch,
                                     "threads": args.threads, "repeats": args.repeats, "arithmetic": work_per,
                                     "training": results, "sampling": sampling}, table)


if __name__ == "__main__":
    main()
