"""Shared fixtures: tiny stores with known physics, fast enough for every test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepfield.data.store import create_store


def cli(capsys, *args) -> tuple[int, str]:
    """Run `deepfield ARGS...` in-process: (exit code, stdout + stderr)."""
    from deepfield.cli._app import run_app

    with pytest.raises(SystemExit) as info:
        run_app([str(a) for a in args])
    captured = capsys.readouterr()
    return info.value.code or 0, captured.out + captured.err


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks run fastest on one thread, and do not fight other work for the cores;
    use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def second_moment(image: torch.Tensor) -> tuple[float, float]:
    """Unweighted sigma^2 along y and x (pixels^2) of a (H, W) image about its centroid."""
    h, w = image.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=image.dtype), torch.arange(w, dtype=image.dtype), indexing="ij")
    flux = image.sum()
    my, mx = (image * yy).sum() / flux, (image * xx).sum() / flux
    return float((image * (yy - my) ** 2).sum() / flux), float((image * (xx - mx) ** 2).sum() / flux)


def blob_images(n: int, size: int = 16, seed: int = 0, sigma_noise: float = 0.3):
    """Circular Gaussian galaxies of known flux (counts) and size (pixels) plus white noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    radius = rng.uniform(1.0, size / 6, n)
    flux = 10 ** rng.uniform(1.7, 2.5, n)
    truth = flux[:, None, None] * np.exp(-((xx - c) ** 2 + (yy - c) ** 2)[None] / (2 * radius[:, None, None] ** 2))
    truth /= 2 * np.pi * radius[:, None, None] ** 2
    x = truth + rng.normal(0, sigma_noise, truth.shape)
    return x[:, None].astype(np.float32), truth[:, None].astype(np.float32), radius, flux


def write_blob_store(path, n: int = 240, size: int = 16, seed: int = 0):
    x, truth, radius, flux = blob_images(n, size, seed)
    pixel_scale = 0.2
    magnitude = 30 - 2.5 * np.log10(flux)
    with create_store(path, (1, size, size), bands=("r",), pixel_scale=pixel_scale,
                      arrays={"truth": (1, size, size)},
                      units={"magnitude": "mag", "half_light_radius": "arcsec", "flux_r": "count"},
                      provenance={"made_by": "tests.conftest.write_blob_store", "seed": seed}) as w:
        # half-light radius of a circular Gaussian = sigma * sqrt(2 ln 2)
        w.append(x=x, truth=truth, catalog={"magnitude": magnitude,
                                            "half_light_radius": radius * np.sqrt(2 * np.log(2)) * pixel_scale,
                                            "flux_r": flux})
    return path


@pytest.fixture(scope="session")
def blob_store(tmp_path_factory):
    """A 240-object, 16x16, single-band store with a truth array and catalog (read-only)."""
    from deepfield.data.store import open_store

    return open_store(write_blob_store(tmp_path_factory.mktemp("stores") / "blobs"))
