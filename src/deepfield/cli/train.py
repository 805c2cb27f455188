"""`deepfield train FAMILY`: fit a model on a store and write a model folder."""

from __future__ import annotations

from pathlib import Path

import typer

from deepfield._names import comma_list
from deepfield.cli._app import app, console


def _devices(value: str):
    return value if value == "auto" else int(value)


@app.command()
def train(
    family: str = typer.Argument(..., help="pca, ae (dense autoencoder), conv-ae, vae, cvae, dcgan, wgan-gp, cgan, "
                                         "cyclegan, pixelcnn; or flow / gmm: a latent prior for the VAE at --model."),
    store: Path = typer.Option(None, "--store", "-s", help="Training store (flow/gmm: default the VAE's)."),
    out: Path = typer.Option(None, "--out", "-o", help="Model folder to write (flow/gmm: MODEL/prior)."),
    model: Path = typer.Option(None, "--model", help="flow/gmm: the trained VAE folder."),
    flow_kind: str = typer.Option("nsf", "--flow-kind", help="flow: nsf (neural spline) or maf."),
    where: str = typer.Option(None, "--where",
                              help="Train on the objects matching a catalog query, e.g. 'snr > 20' (the test split stays "
                                   "whole); flow/gmm: fit on the codes of those training objects."),
    refine_steps: int = typer.Option(None, "--refine-steps",
                                     help="flow/gmm: fit on codes refined object by object in this many steps, "
                                          "where the encoder falls short (0: the encoder's means)."),
    refine_prior_weight: float = typer.Option(None, "--refine-prior-weight",
                                              help="flow/gmm: weight of the N(0, I) prior in that refinement "
                                                   "(default: the VAE's beta; 0: maximum-likelihood codes)."),
    extra_store: str = typer.Option(None, "--extra-store",
                                    help="flow/gmm: more stores (comma-separated) whose objects' codes join the "
                                         "training codes, selected like the VAE's (its training --where, then this --where)."),
    latent_dim: int = typer.Option(None, "--latent-dim", "-d", help="Code length (default: 16)."),
    epochs: int = typer.Option(None, "--epochs", "-e", help="Maximum epochs (default: 20)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Objects per step (default: 64)."),
    lr: float = typer.Option(None, "--lr", help="Learning rate (default: 1e-3)."),
    denoise: float = typer.Option(None, "--denoise", help="Denoising: input noise std in units of the pixel std."),
    sparse: float = typer.Option(None, "--sparse", help="Sparse: weight of the L1 penalty on the code."),
    method: str = typer.Option(None, "--method", help="PCA: exact, randomized or incremental."),
    likelihood: str = typer.Option(None, "--likelihood",
                                   help="VAE: pixel (PSF + ivar), fourier (PSF + noise power spectrum), gaussian, bernoulli."),
    condition: str = typer.Option(None, "--condition", help="CVAE: catalog columns, e.g. half_light_radius,magnitude,redshift."),
    flux_condition: str = typer.Option(
        None, "--flux-condition",
        help="CVAE: the condition column with each object's total flux (a magnitude, e.g. 'magnitude', or a flux "
             "in store units): it scales a flux-free decoded profile, so faint galaxies share bright ones' shapes."),
    size_condition: str = typer.Option(
        None, "--size-condition",
        help="CVAE: the condition column with each object's half-light radius, e.g. 'half_light_radius': the decoder "
             "draws one reference size and the profile is dilated to each radius (flux kept)."),
    decoder_condition: str = typer.Option(
        None, "--decoder-condition",
        help="CVAE: the condition columns the decoder reads ('' for none; default: all but --flux-condition and "
             "--size-condition)."),
    beta: float = typer.Option(None, "--beta", help="VAE: weight of the KL term (beta-VAE)."),
    kl_warmup: int = typer.Option(None, "--kl-warmup", help="VAE: epochs over which the KL weight rises to beta."),
    bits: int = typer.Option(None, "--bits", help="pixelcnn: quantisation depth, bits per pixel value (default 8)."),
    perturb_rate: float = typer.Option(None, "--perturb-rate",
                                       help="pixelcnn: fraction of pixel values randomised in training (Ren et al. "
                                            "2019 background model; 0.1-0.2)."),
    store_b: Path = typer.Option(None, "--store-b", help="cyclegan: the second domain's store (A is --store)."),
    resample: bool = typer.Option(False, "--resample", help="cyclegan: resample --store-b onto --store's pixel grid."),
    n_critic: int = typer.Option(None, "--n-critic", help="GANs: discriminator steps per generator step."),
    gp_weight: float = typer.Option(None, "--gp-weight", help="wgan-gp, cgan: gradient-penalty weight (default 10)."),
    encoder_epochs: int = typer.Option(None, "--encoder-epochs",
                                       help="GANs: epochs training the encoder after the game (default 5)."),
    config: Path = typer.Option(None, "--config", help="YAML file with 'model:' and 'training:' sections."),
    seed: int = typer.Option(None, "--seed", help="Random seed (default: 0)."),
    patience: int = typer.Option(None, "--patience", help="Early-stopping patience in epochs (0: off) (default: 5)."),
    accelerator: str = typer.Option(None, "--accelerator", help="auto, cpu or gpu (default: auto)."),
    devices: str = typer.Option(None, "--devices", help="auto or a number (default: auto)."),
    strategy: str = typer.Option(None, "--strategy", help="auto, ddp or ddp_spawn (default: auto)."),
    precision: str = typer.Option(None, "--precision", help="32-true or bf16-mixed (default: 32-true)."),
    gradient_clip: float = typer.Option(None, "--gradient-clip", help="Clip the gradient norm (default: the family's; VAEs 1.0)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
):
    """Train a model on a store; Ctrl-C saves a checkpoint that --resume continues from."""
    from deepfield.errors import ConfigError
    from deepfield.models.base import config_from_dict
    from deepfield.train import TrainingInterrupted, TrainSettings, load_yaml_config
    from deepfield.train import train as train_model

    if family in ("flow", "gmm"):
        from deepfield.train.prior import train_prior

        if model is None:
            raise ConfigError(f"train {family} fits a latent prior on a trained VAE: pass --model VAE_DIR")
        names = comma_list(condition)
        path = train_prior(model, store, kind=flow_kind if family == "flow" else "gmm", condition=names,
                           epochs=epochs or 100, lr=lr or 1e-3, seed=seed or 0, where=where, progress=progress,
                           refine_steps=refine_steps or 0, refine_prior_weight=refine_prior_weight,
                           extra_stores=comma_list(extra_store))
        import json

        m = json.loads((path / "metrics.json").read_text())
        console.print(f"[green]prior written to[/] {path}  (held-out codes: log p = {m['val_log_prob']:.3f} nats "
                      f"vs {m['val_log_prob_standard_normal']:.3f} under N(0, I))")
        return
    if refine_steps is not None or refine_prior_weight is not None or extra_store is not None:
        raise ConfigError("--refine-steps, --refine-prior-weight and --extra-store apply to latent priors (train "
                          "flow / gmm --model VAE_DIR)")
    if store is None or out is None:
        raise ConfigError(f"train {family} needs --store and --out")
    model_options, train_options = load_yaml_config(config) if config else ({}, {})
    cli_model = {"latent_dim": latent_dim, "denoise_sigma": denoise, "sparse_l1": sparse, "method": method,
                 "likelihood": likelihood, "beta": beta, "kl_warmup_epochs": kl_warmup,
                 "bits": bits, "perturb_rate": perturb_rate, "flux_condition": flux_condition,
                 "size_condition": size_condition,
                 "decoder_condition": None if decoder_condition is None else comma_list(decoder_condition),
                 "condition": comma_list(condition) if condition else None}
    for key, value in cli_model.items():
        if value is not None:
            model_options[key] = value
    cli_train = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "patience": patience,
                 "accelerator": accelerator, "devices": _devices(devices) if devices else None,
                 "strategy": strategy, "precision": precision, "gradient_clip": gradient_clip, "where": where}
    train_options.update({k: v for k, v in cli_train.items() if v is not None})
    train_options["progress"] = progress
    settings = config_from_dict(TrainSettings, train_options, str(config) if config else "training options")
    from deepfield.train.gan import GAN_FAMILIES

    if family in GAN_FAMILIES:
        _train_gan(family, store, out, model_options, settings, store_b=store_b, resample=resample, lr=lr,
                   gan_options={"n_critic": n_critic, "gp_weight": gp_weight, "encoder_epochs": encoder_epochs},
                   resume=resume, overwrite=overwrite)
        return
    if store_b is not None or resample or n_critic is not None or gp_weight is not None or encoder_epochs is not None:
        raise ConfigError("--store-b, --resample, --n-critic, --gp-weight and --encoder-epochs apply to GANs "
                          "(dcgan, wgan-gp, cgan, cyclegan)")
    if family == "pca" and ("denoise_sigma" in model_options or "sparse_l1" in model_options):
        raise ConfigError("--denoise and --sparse apply to autoencoders (ae, conv-ae), not pca")
    if family != "pca" and "method" in model_options:
        raise ConfigError("--method applies to pca only")
    if family != "pixelcnn" and ("bits" in model_options or "perturb_rate" in model_options):
        raise ConfigError("--bits and --perturb-rate apply to pixelcnn only")
    vae_only = [k for k in ("likelihood", "beta", "kl_warmup_epochs", "condition", "flux_condition",
                            "size_condition", "decoder_condition") if k in model_options
                and not (k == "condition" and family == "pixelcnn")]
    if vae_only and family not in ("vae", "cvae"):
        raise ConfigError(f"{', '.join('--' + k.replace('_epochs', '').replace('_', '-') for k in vae_only)} "
                          "apply to vae and cvae only")
    try:
        path = train_model(family, store, out, model_options=model_options, settings=settings,
                           resume=resume, overwrite=overwrite)
    except TrainingInterrupted as err:
        console.print(f"[yellow]{err}[/]")
        raise typer.Exit(130) from None
    if path is None:  # a non-zero DDP rank
        return
    import json

    metrics = json.loads((path / "metrics.json").read_text())
    parts = [f"{k} {metrics[k]:.4g}" for k in ("train_mse", "val_mse", "test_mse") if metrics.get(k) is not None]
    if family == "pixelcnn" and metrics.get("best_val_loss") is not None:
        parts.insert(0, f"validation bits/dim {metrics['best_val_loss']:.4g}")
    console.print(f"[green]model written to[/] {path}  ({', '.join(parts)}; MSE in units of the pixel variance)")


def _train_gan(family, store, out, model_options, settings, *, store_b, resample, lr, gan_options, resume, overwrite):
    """`deepfield train dcgan|wgan-gp|cgan|cyclegan`: the two-player training of deepfield.train.gan."""
    import json

    from deepfield.errors import ConfigError
    from deepfield.train import TrainingInterrupted
    from deepfield.train.gan import train_gan

    flags = {"denoise_sigma": "--denoise", "sparse_l1": "--sparse", "method": "--method", "likelihood": "--likelihood",
             "beta": "--beta", "kl_warmup_epochs": "--kl-warmup", "condition": "--condition",
             "flux_condition": "--flux-condition", "size_condition": "--size-condition",
             "decoder_condition": "--decoder-condition"}
    not_gan = [flag for key, flag in flags.items() if key in model_options and (key != "condition" or family != "cgan")]
    if not_gan:
        raise ConfigError(f"{', '.join(not_gan)} do(es) not apply to {family}")
    if lr is not None:  # one --lr for both players; a config file can set lr_g and lr_d apart
        model_options.update(lr_g=lr, lr_d=lr)
    model_options.update({k: v for k, v in gan_options.items() if v is not None})
    try:
        path = train_gan(family, store, out, store_b=store_b, model_options=model_options, settings=settings,
                         resample=resample, resume=resume, overwrite=overwrite)
    except TrainingInterrupted as err:
        console.print(f"[yellow]{err}[/]")
        raise typer.Exit(130) from None
    if path is None:
        return
    metrics = json.loads((path / "metrics.json").read_text())
    last = ([row for row in metrics.get("history", []) if "train_d_loss" in row] or [{}])[-1]
    parts = [f"{k} {last[k]:.4g}" for k in ("train_d_loss", "train_g_loss") if k in last]
    parts += [f"{k} {metrics[k]:.4g}" for k in ("encoder_val_residual_mse", "cycle_val_l1_a", "cycle_val_l1_b")
              if metrics.get(k) is not None]
    console.print(f"[green]model written to[/] {path}  ({', '.join(parts)}; sample grids in {path / 'logs' / 'samples'})")
