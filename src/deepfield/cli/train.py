"""`deepfield train FAMILY`: fit a model on a store and write a model folder.

Shape of the command, the same for every family::

    deepfield train FAMILY --store S --out DIR [--config cfg.yaml] [--set key=value ...]
                    [--epochs N] [--seed N] [--devices N] [--precision P] [--where Q] [--resume]
    deepfield train FAMILY --help-config          # the family's config keys, with their docs
    deepfield train prior --model VAE_DIR [--kind flow|gmm] [--set key=value ...]

``--set`` takes any key of the family's config dataclass or of the training settings
(:class:`deepfield.train.TrainSettings`); values are read as YAML scalars, and a comma list
gives a tuple (``--set channels=32,64 --set condition=magnitude,redshift``). The per-family
flags of earlier releases (``--latent-dim``, ``--beta``, ...) still work, with a note naming
the ``--set`` that replaces them.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from pathlib import Path

import typer

from deepfield._names import comma_list
from deepfield.cli._app import app, console, interrupted

#: flags of earlier releases -> the key they set (model config, training settings or prior options)
DEPRECATED_FLAGS = {
    "latent_dim": "latent_dim", "batch_size": "batch_size", "lr": "lr", "denoise": "denoise_sigma",
    "sparse": "sparse_l1", "method": "method", "likelihood": "likelihood", "condition": "condition",
    "flux_condition": "flux_condition", "size_condition": "size_condition", "decoder_condition": "decoder_condition",
    "beta": "beta", "kl_warmup": "kl_warmup_epochs", "bits": "bits", "perturb_rate": "perturb_rate",
    "store_b": "store_b", "resample": "resample", "n_critic": "n_critic", "gp_weight": "gp_weight",
    "encoder_epochs": "encoder_epochs", "patience": "patience", "accelerator": "accelerator",
    "strategy": "strategy", "gradient_clip": "gradient_clip", "flow_kind": "kind", "refine_steps": "refine_steps",
    "refine_prior_weight": "refine_prior_weight", "extra_store": "extra_stores",
}
#: options of the latent-prior trainer that only it takes
PRIOR_ONLY = ("refine_steps", "refine_prior_weight", "extra_stores")
#: two-store options of the translating families
SECOND_STORE = ("store_b", "resample")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def parse_value(text: str, hint=None):
    """A --set value: a YAML scalar (``3``, ``0.5``, ``true``, ``null``, ``[8, 16]``); for a tuple
    field a comma list gives a tuple of YAML scalars (``a,b`` -> ('a', 'b'); ``''`` -> ())."""
    import yaml

    from deepfield.errors import ConfigError

    def scalar(s: str):
        try:
            return yaml.safe_load(s)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set value {s!r} is not a YAML value: {err}") from None

    if _is_tuple(hint) and not text.strip().startswith("["):
        return tuple(scalar(v.strip()) for v in text.split(",") if v.strip())
    return scalar(text)


def _is_tuple(hint) -> bool:
    if hint is None:
        return False
    if hint is tuple or typing.get_origin(hint) is tuple:
        return True
    return any(_is_tuple(a) for a in typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, type(int | None)))


def _prior_options() -> dict:
    """{name: annotation} of the latent-prior trainer's options (those --set may give)."""
    from deepfield.train.prior import train_prior

    hints = typing.get_type_hints(train_prior)
    return {name: hints.get(name) for name, p in inspect.signature(train_prior).parameters.items()
            if p.kind is p.KEYWORD_ONLY and name != "progress"}


def _settings_fields() -> dict:
    from deepfield.train import TrainSettings

    return typing.get_type_hints(TrainSettings)


def split_sets(pairs: list[str], model_hints: dict, settings_hints: dict, extra_hints: dict):
    """Sort ``key=value`` pairs into (model options, training settings, extra options); a key in
    none of them is refused, naming the valid keys."""
    from deepfield.errors import ConfigError

    model, settings, extra = {}, {}, {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: write key=value, e.g. --set latent_dim=16")
        for hints, target in ((model_hints, model), (extra_hints, extra), (settings_hints, settings)):
            if key in hints:
                target[key] = parse_value(value, hints[key])
                break
        else:
            valid = sorted({*model_hints, *settings_hints, *extra_hints})
            raise ConfigError(f"--set {key}: unknown key; valid keys: {', '.join(valid)} "
                              "(see deepfield train FAMILY --help-config)")
    return model, settings, extra


def _print_config_help(family: str) -> None:
    from rich.table import Table

    from deepfield.models.base import config_docs, family_class
    from deepfield.train import TrainSettings

    if family == "prior":
        from deepfield.models.prior import LatentPriorConfig

        sections = [("latent prior options (--set)", {k: (str(v), "", "") for k, v in _prior_options().items()}),
                    ("prior model config", config_docs(LatentPriorConfig))]
    else:
        cls = family_class(family)
        caps = ", ".join(sorted(cls.capabilities()))
        console.print(f"[bold]{family}[/]: {cls.__name__} ({caps}; trained by the {cls.trainer} trainer)")
        sections = [(f"{cls.config_class.__name__} (--set key=value or the config file's 'model:')",
                     config_docs(cls.config_class)),
                    ("training settings (--set key=value or the config file's 'training:')",
                     config_docs(TrainSettings))]
        if getattr(cls, "needs_second_store", False):
            sections.append(("second store", {"store_b": ("path", "(required)", "the second domain's store"),
                                              "resample": ("bool", "False", "resample store_b onto --store's "
                                                                            "pixel grid")}))
    for title, docs in sections:
        table = Table(title=title, title_justify="left", show_lines=False)
        for column in ("key", "type", "default", "meaning"):
            table.add_column(column, overflow="fold")
        for name, (kind, default, doc) in docs.items():
            if name in ("input_shape",):
                continue  # taken from the store
            table.add_row(name, kind, default, doc)
        console.print(table)


@app.command(context_settings={"help_option_names": ["--help", "-h"]})
def train(
    family: str = typer.Argument(..., help="A registered family (pca, ae, conv-ae, vae, cvae, pixelcnn, dcgan, "
                                         "wgan-gp, cgan, cyclegan, ...), or 'prior': a latent prior for the VAE at "
                                         "--model."),
    store: Path = typer.Option(None, "--store", "-s", help="Training store (prior: default the VAE's)."),
    out: Path = typer.Option(None, "--out", "-o", help="Model folder to write (prior: MODEL/prior)."),
    config: Path = typer.Option(None, "--config", help="YAML file with 'model:' and 'training:' sections."),
    set_: list[str] = typer.Option(None, "--set", help="key=value of the family's config or the training "
                                                       "settings (repeatable); see --help-config."),
    help_config: bool = typer.Option(False, "--help-config", help="List FAMILY's config keys and exit."),
    model: Path = typer.Option(None, "--model", help="prior: the trained VAE folder."),
    kind: str = typer.Option(None, "--kind", help="prior: flow (neural spline; or nsf / maf) or gmm."),
    epochs: int = typer.Option(None, "--epochs", "-e", help="Maximum epochs (default: 20; prior 100)."),
    seed: int = typer.Option(None, "--seed", help="Random seed (default: 0)."),
    devices: str = typer.Option(None, "--devices", help="auto or a number (default: auto)."),
    precision: str = typer.Option(None, "--precision", help="32-true or bf16-mixed (default: 32-true)."),
    where: str = typer.Option(None, "--where",
                              help="Train on the objects matching a catalog query, e.g. 'snr > 20' (the test split stays "
                                   "whole); prior: fit on the codes of those training objects."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    # -- the flags of earlier releases (each is a --set key now)
    latent_dim: int = typer.Option(None, "--latent-dim", "-d", hidden=True),
    batch_size: int = typer.Option(None, "--batch-size", hidden=True),
    lr: float = typer.Option(None, "--lr", hidden=True),
    denoise: float = typer.Option(None, "--denoise", hidden=True),
    sparse: float = typer.Option(None, "--sparse", hidden=True),
    method: str = typer.Option(None, "--method", hidden=True),
    likelihood: str = typer.Option(None, "--likelihood", hidden=True),
    condition: str = typer.Option(None, "--condition", hidden=True),
    flux_condition: str = typer.Option(None, "--flux-condition", hidden=True),
    size_condition: str = typer.Option(None, "--size-condition", hidden=True),
    decoder_condition: str = typer.Option(None, "--decoder-condition", hidden=True),
    beta: float = typer.Option(None, "--beta", hidden=True),
    kl_warmup: int = typer.Option(None, "--kl-warmup", hidden=True),
    bits: int = typer.Option(None, "--bits", hidden=True),
    perturb_rate: float = typer.Option(None, "--perturb-rate", hidden=True),
    store_b: Path = typer.Option(None, "--store-b", hidden=True),
    resample: bool = typer.Option(False, "--resample", hidden=True),
    n_critic: int = typer.Option(None, "--n-critic", hidden=True),
    gp_weight: float = typer.Option(None, "--gp-weight", hidden=True),
    encoder_epochs: int = typer.Option(None, "--encoder-epochs", hidden=True),
    patience: int = typer.Option(None, "--patience", hidden=True),
    accelerator: str = typer.Option(None, "--accelerator", hidden=True),
    strategy: str = typer.Option(None, "--strategy", hidden=True),
    gradient_clip: float = typer.Option(None, "--gradient-clip", hidden=True),
    flow_kind: str = typer.Option(None, "--flow-kind", hidden=True),
    refine_steps: int = typer.Option(None, "--refine-steps", hidden=True),
    refine_prior_weight: float = typer.Option(None, "--refine-prior-weight", hidden=True),
    extra_store: str = typer.Option(None, "--extra-store", hidden=True),
):
    """Train a model on a store; Ctrl-C saves a checkpoint that --resume continues from."""
    from deepfield.errors import ConfigError

    if help_config:
        _print_config_help(family)
        return
    old = {name: value for name, value in locals().items()
           if name in DEPRECATED_FLAGS and value is not None and value is not False}
    if family in ("flow", "gmm"):  # the earlier spelling of `train prior --kind`
        console.print(f"[yellow]note:[/] `deepfield train {family}` is now `deepfield train prior --kind {family}`")
        kind, family = kind or ("gmm" if family == "gmm" else old.pop("flow_kind", None) or "nsf"), "prior"
    sets = list(set_ or [])
    for name, value in old.items():
        key = DEPRECATED_FLAGS[name]
        if isinstance(value, Path):
            value = str(value)
        if key in ("condition", "decoder_condition", "extra_stores"):
            value = ",".join(comma_list(value))
        sets.append(f"{key}={value}")
    if old:
        said = ", ".join(f"{_flag(n)} -> --set {DEPRECATED_FLAGS[n]}=..." for n in old)
        console.print(f"[yellow]note:[/] these flags are deprecated and go in the next release: {said}")
    if where is not None:
        sets.append(f"where={json.dumps(where)}")
    if family == "prior":
        if devices is not None or precision is not None:
            raise ConfigError("--devices and --precision apply to `train FAMILY`; a latent prior trains on one CPU "
                              "thread in full precision")
        _train_prior(model, store, kind, sets, epochs, seed, progress)
        return
    if devices is not None:
        sets.append(f"devices={devices}")
    if precision is not None:
        sets.append(f"precision={json.dumps(precision)}")
    prior_only = [n for n in old if DEPRECATED_FLAGS[n] in PRIOR_ONLY]
    if prior_only or model is not None or kind is not None:
        flags = [_flag(n) for n in prior_only] + (["--model"] if model else []) + (["--kind"] if kind else [])
        raise ConfigError(f"{', '.join(flags)} apply to latent priors (train prior --model VAE_DIR)")
    if store is None or out is None:
        raise ConfigError(f"train {family} needs --store and --out")
    _train_family(family, store, out, config, sets, epochs, seed, resume, overwrite, progress, old)


def _train_family(family, store, out, config, sets, epochs, seed, resume, overwrite, progress, old):
    from deepfield.errors import ConfigError
    from deepfield.models.base import FAMILIES, config_from_dict, family_class
    from deepfield.train import TrainingInterrupted, TrainSettings, load_yaml_config

    cls = family_class(family)
    model_hints = typing.get_type_hints(cls.config_class)
    two_stores = getattr(cls, "needs_second_store", False)
    extra_hints = {"store_b": str, "resample": bool} if two_stores else {}
    if cls.trainer == "adversarial" and "lr" not in model_hints:
        extra_hints["lr"] = float  # one --lr for both players; lr_g and lr_d set them apart
    # an earlier flag that this family's config does not have says which families it applies to
    not_here = [n for n in old if DEPRECATED_FLAGS[n] not in model_hints and DEPRECATED_FLAGS[n] not in extra_hints
                and DEPRECATED_FLAGS[n] not in _settings_fields()]
    if not_here:
        owners = dict.fromkeys(name for name, c in FAMILIES.items() for n in not_here
                               if DEPRECATED_FLAGS[n] in {f.name for f in dataclasses.fields(c.config_class)}
                               or (DEPRECATED_FLAGS[n] in SECOND_STORE and getattr(c, "needs_second_store", False)))
        raise ConfigError(f"{', '.join(_flag(n) for n in not_here)} apply to {' and '.join(owners)} only, not "
                          f"{family}")
    model_options, train_options = load_yaml_config(config) if config else ({}, {})
    model_set, train_set, extra = split_sets(sets, model_hints, _settings_fields(), extra_hints)
    model_options.update(model_set)
    train_options.update(train_set)
    if "lr" in extra:
        model_options.update(lr_g=extra["lr"], lr_d=extra["lr"])
        train_options["lr"] = extra["lr"]
    for key, value in (("epochs", epochs), ("seed", seed)):
        if value is not None:
            train_options[key] = value
    if train_options.get("devices") not in (None, "auto"):
        try:
            train_options["devices"] = int(train_options["devices"])
        except (TypeError, ValueError):
            raise ConfigError(f"--devices {train_options['devices']!r}: give 'auto' or a number") from None
    train_options["progress"] = progress
    settings = config_from_dict(TrainSettings, train_options, str(config) if config else "training options")
    try:
        if cls.trainer == "adversarial":
            from deepfield.train.gan import train_gan

            path = train_gan(family, store, out, store_b=extra.get("store_b"), model_options=model_options,
                             settings=settings, resample=bool(extra.get("resample", False)), resume=resume,
                             overwrite=overwrite)
        else:
            from deepfield.train import train as train_model

            path = train_model(family, store, out, model_options=model_options, settings=settings, resume=resume,
                               overwrite=overwrite)
    except TrainingInterrupted as err:
        interrupted(str(err))
    if path is None:  # a non-zero DDP rank
        return
    metrics = json.loads((path / "metrics.json").read_text())
    console.print(f"[green]model written to[/] {path}  ({_summary(cls, metrics, path)})")


def _summary(cls, metrics: dict, path: Path) -> str:
    """One line of the numbers a user checks first after training."""
    if cls.trainer == "adversarial":
        last = ([row for row in metrics.get("history", []) if "train_d_loss" in row] or [{}])[-1]
        parts = [f"{k} {last[k]:.4g}" for k in ("train_d_loss", "train_g_loss") if k in last]
        parts += [f"{k} {metrics[k]:.4g}" for k in ("encoder_val_residual_mse", "cycle_val_l1_a", "cycle_val_l1_b")
                  if metrics.get(k) is not None]
        return f"{', '.join(parts)}; sample grids in {path / 'logs' / 'samples'}"
    parts = [f"{k} {metrics[k]:.4g}" for k in ("train_mse", "val_mse", "test_mse") if metrics.get(k) is not None]
    if "log_prob" in cls.capabilities() and metrics.get("best_val_loss") is not None:
        parts.insert(0, f"validation bits/dim {metrics['best_val_loss']:.4g}")
    return f"{', '.join(parts)}; MSE in units of the pixel variance"


def _train_prior(model, store, kind, sets, epochs, seed, progress):
    from deepfield.errors import ConfigError
    from deepfield.train.prior import train_prior

    if model is None:
        raise ConfigError("train prior fits a latent prior on a trained VAE: pass --model VAE_DIR")
    kinds = {"flow": "nsf", "nsf": "nsf", "maf": "maf", "gmm": "gmm"}
    _, _, options = split_sets(sets, {}, {}, _prior_options())
    kind = str(options.pop("kind", kind or "flow"))
    if kind not in kinds:
        raise ConfigError(f"--kind {kind!r}: choose flow (a neural spline flow; or nsf / maf) or gmm")
    options["kind"] = kinds[kind]
    for key, value in (("epochs", epochs), ("seed", seed)):
        if value is not None:
            options[key] = value
    if "extra_stores" in options:
        options["extra_stores"] = comma_list(options["extra_stores"])
    if "condition" in options:
        options["condition"] = comma_list(options["condition"])
    path = train_prior(model, store, progress=progress, **options)
    m = json.loads((path / "metrics.json").read_text())
    console.print(f"[green]prior written to[/] {path}  (held-out codes: log p = {m['val_log_prob']:.3f} nats "
                  f"vs {m['val_log_prob_standard_normal']:.3f} under N(0, I))")
