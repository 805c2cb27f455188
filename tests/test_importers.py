"""Importers: real FITS, HDF5, NumPy and scikit-learn files into stores, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from deepfield.data.importers import detect_format, import_data
from deepfield.data.store import open_store
from deepfield.errors import DeepfieldError, InputError

fits = pytest.importorskip("astropy.io.fits")
h5py = pytest.importorskip("h5py")


def nothing_at(out) -> bool:
    """No store and no partial directory left behind."""
    return not out.exists() and not (out.parent / f".{out.name}.partial").exists()


def cube_file(path, n=6, channels=3, size=12, seed=0, header=None, catalog=True):
    """A FITS file: an (N, C, H, W) float32 cube in the primary HDU + a catalog table HDU."""
    from astropy.table import Table

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, channels, size, size)).astype(np.float32)
    primary = fits.PrimaryHDU(x)
    for key, value in (header or {}).items():
        primary.header[key] = value
    hdus = [primary]
    table = None
    if catalog:
        table = Table({"id": np.arange(n, dtype=np.int64) * 7 + 1000,
                       "magnitude": rng.uniform(18, 24, n),
                       "half_light_radius": rng.uniform(0.2, 2, n).astype(np.float32),
                       "name": [f"gal{i}" for i in range(n)]})
        table["magnitude"].unit = "mag"
        table["half_light_radius"].unit = "arcsec"
        hdus.append(fits.table_to_hdu(table))
        hdus[-1].name = "CATALOG"
    fits.HDUList(hdus).writeto(path)
    return x, table


# --------------------------------------------------------------------------------------
# FITS


def test_fits_cube_round_trips_pixels_catalog_units_ids_and_bands(tmp_path):
    src = tmp_path / "cube.fits"
    x, table = cube_file(src, header={"FILTER1": "g", "FILTER2": "r", "FILTER3": "i"})
    store = import_data(src, tmp_path / "store")

    assert store.kind == "image" and store.sample_shape == (3, 12, 12)
    np.testing.assert_array_equal(store.read("x"), x)
    assert store.bands == ("g", "r", "i")
    np.testing.assert_array_equal(store.ids, table["id"])
    np.testing.assert_array_equal(store.column("magnitude"), table["magnitude"])
    np.testing.assert_array_equal(store.column("half_light_radius"), table["half_light_radius"])
    assert list(store.column("name")) == [f"gal{i}" for i in range(6)]
    assert store.units == {"magnitude": "mag", "half_light_radius": "arcsec"}
    prov = store.meta["provenance"]
    assert prov["format"] == "fits" and prov["source"] == str(src.resolve())
    assert prov["files"][str(src.resolve())]["bytes"] == src.stat().st_size


def test_fits_bands_option_overrides_header_and_must_match_channels(tmp_path):
    src = tmp_path / "cube.fits"
    cube_file(src, header={"BAND": "r"})  # one band keyword for three channels: ignored
    assert import_data(src, tmp_path / "a").bands == ()
    assert import_data(src, tmp_path / "b", bands="u, g,z").bands == ("u", "g", "z")
    with pytest.raises(InputError, match=r"2 band names .* 3 channel"):
        import_data(src, tmp_path / "c", bands=["g", "r"])
    assert nothing_at(tmp_path / "c")


@pytest.mark.parametrize("header, expected", [
    ({"CD1_1": -5.5555e-5, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 5.5555e-5}, 0.199998),
    ({"CDELT1": -1.0 / 3600 * 0.263, "CDELT2": 1.0 / 3600 * 0.263}, 0.263),
    ({"CDELT1": -0.168, "CDELT2": 0.168, "CUNIT1": "arcsec", "CUNIT2": "arcsec"}, 0.168),
    ({"PIXSCALE": 0.396}, 0.396),
])
def test_pixel_scale_from_header(tmp_path, header, expected):
    src = tmp_path / "cube.fits"
    cube_file(src, header=header, catalog=False)
    store = import_data(src, tmp_path / "store")
    assert store.pixel_scale == pytest.approx(expected, rel=1e-9)


def test_pixel_scale_option_wins(tmp_path):
    src = tmp_path / "cube.fits"
    cube_file(src, header={"PIXSCALE": 0.396}, catalog=False)
    assert import_data(src, tmp_path / "s", pixel_scale=0.2).pixel_scale == 0.2


def test_stamp_folder_in_name_order_with_csv_catalog(tmp_path):
    folder = tmp_path / "stamps"
    folder.mkdir()
    rng = np.random.default_rng(1)
    stamps = {}
    for name in ("c.fits", "a.fits", "b.fits", "d.fits"):  # written out of order
        img = rng.normal(size=(10, 9)).astype(np.float32)
        hdu = fits.PrimaryHDU(img)
        hdu.header["BAND"] = "i"
        hdu.header["CD1_1"], hdu.header["CD2_2"] = -5.5555e-5, 5.5555e-5
        hdu.writeto(folder / name)
        stamps[name] = img
    (folder / "notes.txt").write_text("not a stamp")
    catalog = tmp_path / "cat.csv"
    catalog.write_text("id,redshift,field\n10,0.1,A\n11,0.25,B\n12,1.5,A\n13,2.0,C\n")

    store = import_data(folder, tmp_path / "store", catalog=catalog, units={"redshift": ""})
    assert store.sample_shape == (1, 10, 9) and len(store) == 4
    np.testing.assert_array_equal(store.read("x")[:, 0], np.stack([stamps[k] for k in sorted(stamps)]))
    assert list(store.column("stamp_file")) == ["a.fits", "b.fits", "c.fits", "d.fits"]
    np.testing.assert_array_equal(store.ids, [10, 11, 12, 13])
    np.testing.assert_array_equal(store.column("redshift"), [0.1, 0.25, 1.5, 2.0])
    assert list(store.column("field")) == ["A", "B", "A", "C"]
    assert store.bands == ("i",)
    assert store.pixel_scale == pytest.approx(0.199998)
    assert store.meta["provenance"]["files"][str(folder.resolve())]["n_files"] == 5


def test_stamps_of_different_shapes_name_the_odd_file(tmp_path):
    folder = tmp_path / "stamps"
    folder.mkdir()
    fits.PrimaryHDU(np.zeros((8, 8), np.float32)).writeto(folder / "s0.fits")
    fits.PrimaryHDU(np.zeros((8, 8), np.float32)).writeto(folder / "s1.fits")
    fits.PrimaryHDU(np.zeros((8, 9), np.float32)).writeto(folder / "s2.fits")
    out = tmp_path / "store"
    with pytest.raises(InputError, match=r"s2\.fits .* shape \(8, 9\) but s0\.fits has \(8, 8\)"):
        import_data(folder, out)
    assert nothing_at(out)


def test_shared_and_per_object_psf_and_ivar_hdu(tmp_path):
    src = tmp_path / "cube.fits"
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 2, 8, 8)).astype(np.float32)
    ivar = rng.uniform(1, 2, size=x.shape).astype(np.float32)
    fits.HDUList([fits.PrimaryHDU(x), fits.ImageHDU(ivar, name="IVAR")]).writeto(src)
    shared = rng.uniform(size=(2, 5, 5)).astype(np.float32)
    fits.PrimaryHDU(shared).writeto(tmp_path / "psf.fits")
    per_object = rng.uniform(size=(4, 2, 5, 5)).astype(np.float32)
    fits.PrimaryHDU(per_object).writeto(tmp_path / "psfs.fits")

    a = import_data(src, tmp_path / "a", psf=tmp_path / "psf.fits", ivar="IVAR")
    assert a.shared_arrays == ("psf",) and "ivar" in a.array_names
    np.testing.assert_array_equal(a.read("psf")[3], shared)
    np.testing.assert_array_equal(a.read("ivar"), ivar)

    b = import_data(src, tmp_path / "b", psf=str(tmp_path / "psfs.fits"), ivar=1)
    assert "psf" in b.array_names
    np.testing.assert_array_equal(b.read("psf"), per_object)


def test_psf_with_wrong_band_count(tmp_path):
    src = tmp_path / "cube.fits"
    cube_file(src, channels=3, catalog=False)
    fits.PrimaryHDU(np.ones((2, 5, 5), np.float32)).writeto(tmp_path / "psf.fits")
    out = tmp_path / "store"
    with pytest.raises(InputError, match=r"psf\.fits.*shape \(2, 5, 5\).*3 band"):
        import_data(src, out, psf=tmp_path / "psf.fits")
    assert nothing_at(out)


def test_nan_pixels_raise_naming_objects_or_zero_with_mask(tmp_path):
    src = tmp_path / "cube.fits"
    x = np.ones((5, 1, 6, 6), np.float32)
    x[1, 0, 2, 3] = np.nan
    x[4, 0, 0, 0] = np.inf
    ivar = np.full_like(x, 4.0)
    fits.HDUList([fits.PrimaryHDU(x), fits.ImageHDU(ivar, name="IVAR")]).writeto(src)
    out = tmp_path / "store"
    with pytest.raises(InputError, match=r"cube\.fits.*NaN or inf pixels in object 1, object 4.*"
                                         r"nan_policy='zero'"):
        import_data(src, out)
    assert nothing_at(out)
    with pytest.raises(InputError, match=r"in object 1;"):  # stops at the first bad batch
        import_data(src, out, batch_rows=2)
    assert nothing_at(out)

    store = import_data(src, out, nan_policy="zero", ivar="IVAR", batch_rows=2)
    mask = store.read("mask")
    assert mask.dtype == bool and mask.sum() == 2 and mask[1, 0, 2, 3] and mask[4, 0, 0, 0]
    pixels = store.read("x")
    assert np.all(pixels[mask] == 0) and np.all(pixels[~mask] == 1)
    ivar_read = store.read("ivar")
    assert np.all(ivar_read[mask] == 0) and np.all(ivar_read[~mask] == 4)
    assert store.meta["provenance"]["masked_pixels"] == 2
    assert store.meta["provenance"]["masked_objects"] == 2


def test_nan_in_a_stamp_names_the_file(tmp_path):
    folder = tmp_path / "stamps"
    folder.mkdir()
    for i in range(3):
        img = np.zeros((4, 4), np.float32)
        if i == 2:
            img[1, 1] = np.nan
        fits.PrimaryHDU(img).writeto(folder / f"stamp{i}.fits")
    out = tmp_path / "store"
    with pytest.raises(InputError, match=r"NaN or inf pixels in stamp2\.fits"):
        import_data(folder, out)
    assert nothing_at(out)


@pytest.mark.parametrize("cut", ["half", "header"])
def test_truncated_or_corrupt_fits_names_the_file(tmp_path, cut):
    whole = tmp_path / "whole.fits"
    cube_file(whole)
    data = whole.read_bytes()
    src = tmp_path / "broken.fits"
    src.write_bytes(data[: len(data) // 2] if cut == "half" else b"SIMPLE  = garbage" * 10)
    out = tmp_path / "store"
    with pytest.raises(InputError, match=r"broken\.fits.*(truncated|corrupt)"):
        import_data(src, out)
    assert nothing_at(out)


def test_truncated_stamp_in_a_folder(tmp_path):
    folder = tmp_path / "stamps"
    folder.mkdir()
    for i in range(3):
        fits.PrimaryHDU(np.ones((64, 64), np.float32)).writeto(folder / f"s{i}.fits")
    data = (folder / "s1.fits").read_bytes()
    (folder / "s1.fits").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"s1\.fits is truncated"):
        import_data(folder, tmp_path / "store")
    assert nothing_at(tmp_path / "store")


def test_catalog_rows_must_match_objects(tmp_path):
    src = tmp_path / "cube.fits"
    cube_file(src, n=6, catalog=False)
    (tmp_path / "cat.csv").write_text("id,mag\n1,20\n2,21\n3,22\n")
    out = tmp_path / "store"
    with pytest.raises(InputError, match=r"cat\.csv has 3 rows .* 6 objects"):
        import_data(src, out, catalog=tmp_path / "cat.csv")
    assert nothing_at(out)


def test_catalog_ids_must_be_unique_integers(tmp_path):
    src = tmp_path / "cube.fits"
    cube_file(src, n=3, catalog=False)
    (tmp_path / "dup.csv").write_text("id,mag\n1,20\n1,21\n3,22\n")
    with pytest.raises(InputError, match=r"repeats ids, e.g. \[1\]"):
        import_data(src, tmp_path / "a", catalog=tmp_path / "dup.csv")
    (tmp_path / "names.csv").write_text("ID,mag\nJ1,20\nJ2,21\nJ3,22\n")
    with pytest.raises(InputError, match=r"non-integer.*id_column=''"):
        import_data(src, tmp_path / "b", catalog=tmp_path / "names.csv")
    store = import_data(src, tmp_path / "c", catalog=tmp_path / "names.csv", id_column="")
    np.testing.assert_array_equal(store.ids, [0, 1, 2])
    assert list(store.column("ID")) == ["J1", "J2", "J3"]
    assert nothing_at(tmp_path / "a") and nothing_at(tmp_path / "b")


def test_missing_file_unknown_extension_and_format(tmp_path):
    with pytest.raises(InputError, match=r"no such file or folder: .*nope\.fits"):
        import_data(tmp_path / "nope.fits", tmp_path / "s")
    (tmp_path / "data.xyz").write_text("?")
    with pytest.raises(InputError, match=r"data\.xyz.*extension '\.xyz'.*format="):
        import_data(tmp_path / "data.xyz", tmp_path / "s")
    with pytest.raises(InputError, match=r"unknown import format 'votable'"):
        import_data(tmp_path / "data.xyz", tmp_path / "s", format="votable")
    with pytest.raises(InputError, match=r"unknown option\(s\) hdu for a numpy import"):
        import_data(tmp_path / "data.npy", tmp_path / "s", hdu=1)
    assert nothing_at(tmp_path / "s")
    assert detect_format("x.fits.gz") == "fits" and detect_format("sklearn:iris") == "sklearn"


# --------------------------------------------------------------------------------------
# HDF5


def test_hdf5_reads_more_rows_than_one_batch(tmp_path):
    src = tmp_path / "survey.h5"
    n = 5000  # more than the default 4096 rows per batch
    rng = np.random.default_rng(3)
    images = rng.normal(size=(n, 4, 4)).astype(np.float32)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    with h5py.File(src, "w") as f:
        f.create_dataset("images", data=images, chunks=(512, 4, 4))
        cat = f.create_group("catalog")
        cat["id"] = ids
        cat["flux"] = rng.uniform(size=n)
        cat["flux"].attrs["unit"] = "nJy"
        cat.create_dataset("survey", data=np.array(["hsc"] * n, dtype=h5py.string_dtype()))

    store = import_data(src, tmp_path / "a", x="images")
    assert store.sample_shape == (1, 4, 4) and len(store) == n
    np.testing.assert_array_equal(store.read("x")[:, 0], images)
    np.testing.assert_array_equal(store.ids, ids)
    assert store.units == {"flux": "nJy"} and store.column("survey")[-1] == "hsc"
    # the default finds the only image dataset; smaller batches write the same store
    again = import_data(src, tmp_path / "b", batch_rows=1000)
    assert again.fingerprint == store.fingerprint


def test_hdf5_compound_catalog_psf_and_ivar(tmp_path):
    src = tmp_path / "survey.hdf5"
    rng = np.random.default_rng(4)
    x = rng.normal(size=(7, 2, 6, 6)).astype(np.float32)
    table = np.zeros(7, dtype=[("objid", "<i8"), ("z", "<f4"), ("tag", "S4")])
    table["objid"], table["z"], table["tag"] = np.arange(7) + 50, rng.uniform(size=7), b"ok"
    with h5py.File(src, "w") as f:
        f["x"] = x
        f["ivar"] = np.ones_like(x)
        f["psf"] = np.ones((2, 3, 3), np.float32)
        f["objects"] = table
    store = import_data(src, tmp_path / "s", x="x", ivar="ivar", psf="psf", catalog="objects",
                        id_column="objid", units="z=")
    np.testing.assert_array_equal(store.read("x"), x)
    np.testing.assert_array_equal(store.ids, table["objid"])
    np.testing.assert_array_equal(store.column("z"), table["z"])
    assert list(store.column("tag")) == ["ok"] * 7
    assert store.shared_arrays == ("psf",) and "ivar" in store.array_names


def test_hdf5_missing_or_ambiguous_dataset_lists_what_exists(tmp_path):
    src = tmp_path / "survey.h5"
    with h5py.File(src, "w") as f:
        f["images"] = np.zeros((3, 4, 4), np.float32)
        f["weights"] = np.zeros((3, 4, 4), np.float32)
    out = tmp_path / "store"
    with pytest.raises(InputError, match=r"no dataset 'imgs' .* it has: images \(3, 4, 4\) "
                                         r"float32, weights"):
        import_data(src, out, x="imgs")
    with pytest.raises(InputError, match=r"pass x= .* images \(3, 4, 4\), weights \(3, 4, 4\)"):
        import_data(src, out)
    assert nothing_at(out)


def test_hdf5_spectra_with_wavelength(tmp_path):
    src = tmp_path / "spectra.h5"
    flux = np.random.default_rng(5).normal(size=(4, 30)).astype(np.float32)
    with h5py.File(src, "w") as f:
        f["flux"] = flux
        f["wavelength"] = np.linspace(400, 700, 30)
        f["wavelength"].attrs["unit"] = "nm"
        f["redshift"] = np.array([0.1, 0.2, 0.3, 0.4])
    store = import_data(src, tmp_path / "s")
    assert store.kind == "spectrum" and store.sample_shape == (30,)
    np.testing.assert_allclose(store.wavelength, np.linspace(4000, 7000, 30))
    np.testing.assert_array_equal(store.column("redshift"), [0.1, 0.2, 0.3, 0.4])


def test_corrupt_hdf5(tmp_path):
    src = tmp_path / "bad.h5"
    src.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 50)
    with pytest.raises(InputError, match=r"bad\.h5 is not a readable HDF5 file"):
        import_data(src, tmp_path / "s")
    assert nothing_at(tmp_path / "s")


# --------------------------------------------------------------------------------------
# NumPy


def test_npz_with_catalog_columns_and_ivar(tmp_path):
    src = tmp_path / "cutouts.npz"
    rng = np.random.default_rng(6)
    x = rng.normal(size=(5, 3, 8, 8)).astype(np.float32)
    ivar = rng.uniform(1, 3, size=x.shape).astype(np.float32)
    np.savez(src, x=x, ivar=ivar, id=np.array([9, 8, 7, 6, 5]), magnitude=np.arange(5.0) + 20,
             flag=np.array([True, False, True, True, False]))
    store = import_data(src, tmp_path / "s", bands="g,r,i", pixel_scale=0.168,
                        units="magnitude=mag")
    np.testing.assert_array_equal(store.read("x"), x)
    np.testing.assert_array_equal(store.read("ivar"), ivar)
    np.testing.assert_array_equal(store.ids, [9, 8, 7, 6, 5])
    np.testing.assert_array_equal(store.column("magnitude"), np.arange(5.0) + 20)
    np.testing.assert_array_equal(store.column("flag"), [True, False, True, True, False])
    assert store.units == {"magnitude": "mag"}
    assert store.bands == ("g", "r", "i") and store.pixel_scale == 0.168


def test_npz_column_of_wrong_length_and_npy_array(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 8, 8), np.float32), magnitude=np.zeros(3))
    with pytest.raises(InputError, match=r"has 3 rows \(column 'magnitude'\) .* 4 objects"):
        import_data(tmp_path / "bad.npz", tmp_path / "s")
    assert nothing_at(tmp_path / "s")
    spectra = np.random.default_rng(7).normal(size=(6, 20)).astype(np.float32)
    np.save(tmp_path / "spectra.npy", spectra)
    np.savetxt(tmp_path / "wl.txt", np.arange(20) * 2.5 + 3600)
    store = import_data(tmp_path / "spectra.npy", tmp_path / "s", wavelength=tmp_path / "wl.txt")
    assert store.kind == "spectrum"
    np.testing.assert_array_equal(store.read("x"), spectra)
    np.testing.assert_array_equal(store.wavelength, np.arange(20) * 2.5 + 3600)
    table = import_data(tmp_path / "spectra.npy", tmp_path / "t", kind="table")
    assert table.kind == "table"


# --------------------------------------------------------------------------------------
# scikit-learn's bundled sets


def test_sklearn_iris_and_digits(tmp_path):
    iris = import_data("sklearn:iris", tmp_path / "iris")
    assert iris.kind == "table" and iris.sample_shape == (4,) and len(iris) == 150
    assert iris.read("x").dtype == np.float32
    assert np.bincount(iris.column("target")).tolist() == [50, 50, 50]
    assert set(iris.column("target_name")) == {"setosa", "versicolor", "virginica"}
    assert iris.meta["extra"]["feature_names"][0] == "sepal length (cm)"
    assert iris.read("x")[0].tolist() == pytest.approx([5.1, 3.5, 1.4, 0.2])

    digits = import_data("sklearn:digits", tmp_path / "digits")
    assert digits.kind == "image" and digits.sample_shape == (1, 8, 8) and len(digits) == 1797
    assert sorted(set(digits.column("target").tolist())) == list(range(10))
    pixels = digits.read("x")
    assert pixels.min() == 0 and pixels.max() == 16 and np.all(pixels == np.round(pixels))


def test_unknown_sklearn_set(tmp_path):
    with pytest.raises(InputError, match=r"unknown scikit-learn data set 'mnist'.*sklearn:iris"):
        import_data("sklearn:mnist", tmp_path / "s")
    assert nothing_at(tmp_path / "s")


def test_existing_store_needs_overwrite(tmp_path):
    import_data("sklearn:iris", tmp_path / "s")
    with pytest.raises(DeepfieldError, match="already exists.*overwrite"):
        import_data("sklearn:wine", tmp_path / "s")
    assert len(import_data("sklearn:wine", tmp_path / "s", overwrite=True)) == 178


# --------------------------------------------------------------------------------------
# CLI


def test_cli_import_success_and_bad_input(tmp_path, capsys):
    from deepfield.cli._app import run_app

    src = tmp_path / "cube.fits"
    cube_file(src, header={"PIXSCALE": 0.2})
    out = tmp_path / "store"
    with pytest.raises(SystemExit) as ok:  # run_app always exits: 0 on success
        run_app(["import", str(src), str(out), "--bands", "g,r,i"])
    assert ok.value.code == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "n=6" in printed and "(3, 12, 12)" in printed
    assert "magnitude" in printed
    assert open_store(out).bands == ("g", "r", "i")

    bad = tmp_path / "bad"
    with pytest.raises(SystemExit) as exit_info:
        run_app(["import", str(src), str(bad), "--hdu", "NOPE"])
    assert exit_info.value.code == 2
    assert "no HDU 'NOPE'" in capsys.readouterr().err.replace("\n", "")
    assert nothing_at(bad)
