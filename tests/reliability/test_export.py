"""`deepfield export`: files read back with astropy and Pillow hold the store's pixels."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from deepfield.data.store import create_store, open_store


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "deepfield", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=120)


def test_fits_export_round_trips_pixels_catalog_and_pixel_scale(tmp_path):
    from astropy.io import fits

    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 2, 8, 8)).astype("f4")
    with create_store(tmp_path / "s", (2, 8, 8), bands=("g", "r"), pixel_scale=0.2, units={"mag": "mag"}) as w:
        w.append(x=x, catalog={"mag": np.linspace(20, 25, 6)})
    r = _cli("export", tmp_path / "s", "--to", "fits", "--out", tmp_path / "o", "--where", "mag > 21")
    assert r.returncode == 0, r.stderr
    sel = np.flatnonzero(np.linspace(20, 25, 6) > 21)
    for c, band in enumerate("gr"):
        with fits.open(tmp_path / "o" / f"s_{band}.fits") as h:
            np.testing.assert_array_equal(h[0].data, x[sel, c])
            assert h[0].header["PIXSCALE"] == 0.2 and h[0].header["BAND"] == band
            np.testing.assert_allclose(h["CATALOG"].data["mag"], np.linspace(20, 25, 6)[sel])
            assert h["CATALOG"].columns["mag"].unit == "mag"


def test_png_export_is_asinh_stretched_with_a_contact_sheet(tmp_path):
    from PIL import Image

    img = np.zeros((3, 1, 16, 16), "f4")
    img[:, 0, 8, 8] = [1.0, 10.0, 100.0]  # a point source on a flat sky
    with create_store(tmp_path / "s", (1, 16, 16), bands=("r",), pixel_scale=0.2) as w:
        w.append(x=img)
    r = _cli("export", tmp_path / "s", "--to", "png", "--out", tmp_path / "p")
    assert r.returncode == 0, r.stderr
    for i in range(3):
        a = np.asarray(Image.open(tmp_path / "p" / f"{i}.png"))
        assert a.shape == (16, 16) and a[8, 8] == 255 and a[0, 0] == 0
    sheet = np.asarray(Image.open(tmp_path / "p" / "contact_sheet.png"))
    assert sheet.shape == (16, 48) and sheet[8, 8 + 16] == 255


def test_codes_store_exports_to_a_fits_table(tmp_path):
    from astropy.io import fits

    codes = np.random.default_rng(1).normal(size=(5, 3)).astype("f4")
    with create_store(tmp_path / "c", (3,), kind="table") as w:
        w.append(x=codes)
    r = _cli("export", tmp_path / "c", "--to", "fits", "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    with fits.open(tmp_path / "o" / "c.fits") as h:
        np.testing.assert_array_equal(h["CODES"].data["x"], codes)
        np.testing.assert_array_equal(h["CODES"].data["id"], np.arange(5))
    bad = _cli("export", tmp_path / "c", "--to", "png")
    assert bad.returncode == 2 and "fits" in bad.stderr
