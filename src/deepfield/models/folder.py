"""Model folders: how a trained model lives on disk, without pickle.

::

    MODEL/
      config.json          format version, class, hyperparameters, store fingerprint,
                           training settings (split, seed), library version
      weights.safetensors  parameters and buffers (incl. the data normalisation)
      metrics.json         losses and evaluation numbers
      README.md            the model card
      logs/                TensorBoard event files (trained models), optional

The folder is written under a hidden temporary name and renamed when complete, so a crash
never leaves a folder that loads as a good model.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from deepfield._atomic import staged_dir
from deepfield._version import __version__
from deepfield.errors import ConfigError, ModelFolderError
from deepfield.models.base import MODEL_REGISTRY, Model, config_from_dict, config_to_dict

__all__ = ["MODEL_FORMAT_VERSION", "save_model", "load_model", "as_model", "read_model_config", "is_model_folder"]

MODEL_FORMAT_VERSION = 1


def is_model_folder(path) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and (p / "weights.safetensors").is_file()


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def _model_card(model: Model, record: dict, metrics: dict) -> str:
    cfg = record["config"]
    lines = [
        f"# {record['class']} ({model.family})",
        "",
        model.describe(),
        "",
        "## Load",
        "",
        "```python",
        "import deepfield",
        "model = deepfield.load(\"<this folder>\")",
        "codes = model.encode(x)          # x: (N, " + ", ".join(map(str, model.input_shape)) + ") in the store's units",
        "```",
        "",
        "## Hyperparameters",
        "",
        "| name | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in cfg.items()]
    store = record.get("store") or {}
    if store:
        lines += ["", "## Training data", "",
                  f"- store: `{store.get('path')}` (fingerprint `{store.get('fingerprint')}`)",
                  f"- objects: {store.get('n_train')} train, {store.get('n_val')} validation, "
                  f"{store.get('n_test')} held out (split seed {store.get('split_seed')}, "
                  f"fractions {store.get('split_fractions')})"]
        if store.get("bands"):
            lines.append(f"- bands: {', '.join(store['bands'])}; pixel scale {store.get('pixel_scale')} arcsec")
    train = record.get("training") or {}
    if train:
        lines += ["", "## Training", ""] + [f"- {k}: {v}" for k, v in train.items()]
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                lines.append(f"| {k} | {v:.6g} |")
    lines += ["", f"Written by deepfield {record['library_version']} on {record['created']}.", ""]
    return "\n".join(lines)


def save_model(model: Model, path, *, metrics: dict | None = None, store: dict | None = None,
               training: dict | None = None, logs_dir=None, overwrite: bool = False) -> Path:
    """Write `model` as a model folder at `path` (atomically) and return the path.

    Arguments:
        metrics: numbers for metrics.json and the model card.
        store: what the model was trained on (path, fingerprint, split, bands, counts).
        training: training settings (epochs, batch size, seed, device, time).
        logs_dir: a TensorBoard log folder to copy in as logs/.
        overwrite: replace an existing folder at `path`.
    """
    from safetensors.torch import save_file

    final = Path(path)
    if final.exists() and not overwrite:
        raise ModelFolderError(f"{final} already exists; pass --overwrite to replace it or choose another --out")
    if type(model).__name__ not in MODEL_REGISTRY:
        raise ModelFolderError(f"{type(model).__name__} is not a registered deepfield model")
    record: dict[str, Any] = {
        "format_version": MODEL_FORMAT_VERSION,
        "class": type(model).__name__,
        "family": model.family,
        "config": config_to_dict(model.config),
        "store": store or {},
        "training": training or {},
        "library_version": __version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with staged_dir(final) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "weights.safetensors"), metadata={"class": record["class"]})
        (tmp / "config.json").write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(metrics or {}, indent=2, default=_json_default) + "\n")
        (tmp / "README.md").write_text(_model_card(model, record, metrics or {}))
        if logs_dir is not None and Path(logs_dir).is_dir():
            shutil.copytree(logs_dir, tmp / "logs")
    return final


def read_model_config(path) -> dict:
    """The validated config.json record of a model folder."""
    p = Path(path)
    if not p.exists():
        raise ModelFolderError(f"no model folder at {p}")
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        raise ModelFolderError(f"{p} is not a deepfield model folder: it has no config.json "
                               "(train one with `deepfield train`)")
    try:
        record = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"{cfg_path} is corrupt ({err}); retrain or restore the folder") from None
    version = record.get("format_version")
    if version != MODEL_FORMAT_VERSION:
        raise ModelFolderError(f"{p} has model format version {version!r}; this deepfield "
                               f"{__version__} reads version {MODEL_FORMAT_VERSION}. "
                               "Load it with the deepfield version that wrote it "
                               f"({record.get('library_version', 'unknown')}) or retrain")
    if record.get("class") not in MODEL_REGISTRY:
        raise ModelFolderError(f"{cfg_path}: unknown model class {record.get('class')!r}; known: "
                               f"{sorted(MODEL_REGISTRY)}")
    return record


def as_model(model, map_location: str | torch.device = "cpu"):
    """`model` itself when it is already a model (a ``torch.nn.Module``) or None, else the model
    folder at that path loaded by :func:`load_model` (eval mode): what every task taking "a model
    or its folder" calls."""
    if model is None or isinstance(model, torch.nn.Module):
        return model
    return load_model(model, map_location)


def load_model(path, map_location: str | torch.device = "cpu") -> Model:
    """Rebuild the model of a model folder and load its weights; returns it in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    record = read_model_config(p)
    cls = MODEL_REGISTRY[record["class"]]
    try:
        values = {**cls.legacy_config_defaults, **record["config"]}
        model = cls(config_from_dict(cls.config_class, values, str(p / "config.json")))
    except ConfigError as err:
        raise ModelFolderError(f"{p}: {err}") from None
    weights = p / "weights.safetensors"
    if not weights.is_file():
        raise ModelFolderError(f"{p} has no weights.safetensors; the folder is incomplete, retrain")
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFolderError(f"{weights} is corrupt or truncated ({err}); retrain or restore it") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelFolderError(f"{weights} does not match {record['class']}: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
    model.eval()
    model.record = record
    if (p / "prior" / "config.json").is_file() and hasattr(model, "prior"):
        model.prior = load_model(p / "prior", map_location)  # a latent prior fitted on this model's codes
        try:
            metrics = json.loads((p / "prior" / "metrics.json").read_text())
        except (OSError, ValueError):
            metrics = {}
        if isinstance(metrics, dict):
            model.prior.held_out_log_prob = (metrics.get("val_log_prob"), metrics.get("val_log_prob_standard_normal"))
    return model
