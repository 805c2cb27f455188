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


# --------------------------------------------------------------------------------------
# GalSim RealGalaxyCatalogs (deepfield import cosmos): 5 real AEGIS galaxies in two HST bands

from pathlib import Path  # noqa: E402

from conftest import cli  # noqa: E402

REAL = Path(__file__).parent / "data" / "galsim-real"
F606, F814 = REAL / "AEGIS_F606w_catalog.fits", REAL / "AEGIS_F814w_catalog.fits"


def real_copy(tmp_path, edit=None, catalog="AEGIS_F814w_catalog.fits"):
    """The real test files copied to tmp_path; `edit(columns)` changes the catalog's columns."""
    import shutil

    folder = tmp_path / "real"
    shutil.copytree(REAL, folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    if edit is not None:
        with fits.open(folder / catalog, mode="update") as hdul:
            edit(hdul[1].data)
    return folder


@pytest.fixture(scope="module")
def aegis(tmp_path_factory):
    from deepfield.data.importers import import_cosmos

    out = tmp_path_factory.mktemp("cosmos") / "aegis"
    return import_cosmos([F606, F814], out, size=64, progress=False)


def source_stamp(catalog: Path, row: int, what="GAL"):
    table = fits.getdata(catalog, 1)
    name = table[f"{what}_FILENAME"][row].strip()
    return fits.getdata(catalog.parent / name, int(table[f"{what}_HDU"][row])).astype(np.float64)


def test_cosmos_stamps_keep_the_flux_and_record_the_cut(aegis):
    table = fits.getdata(F814, 1)
    assert aegis.bands == ("F606W", "F814W") and aegis.pixel_scale == 0.03
    assert aegis.ids.tolist() == table["IDENT"].tolist()
    x, mask = aegis.read("x").astype(np.float64), aegis.read("mask")
    for c, (band, catalog) in enumerate((("F606W", F606), ("F814W", F814))):
        for i in range(len(aegis)):
            src = source_stamp(catalog, int(aegis.column(f"catalog_row_{band}")[i]))
            h, w = src.shape
            assert (aegis.column(f"source_height_{band}")[i], aegis.column(f"source_width_{band}")[i]) == (h, w)
            # no pixel rescaled: kept flux + recorded cut = the source stamp's flux
            kept = x[i, c].sum()
            assert kept + aegis.column(f"cut_flux_{band}")[i] == pytest.approx(src.sum(), rel=1e-6)
            assert x[i, c, 32, 32] == pytest.approx(src[h // 2, w // 2], rel=1e-6)
            # a source smaller than the stamp is padded: exactly the padding is masked, all flux kept
            padded = (64 - min(h, 64)) * 64 + (64 - min(w, 64)) * 64 - (64 - min(h, 64)) * (64 - min(w, 64))
            assert mask[i, c].sum() == padded
            if h <= 64 and w <= 64:
                assert aegis.column(f"cut_flux_{band}")[i] == pytest.approx(0.0, abs=1e-6 * src.sum())
    # the big galaxy (156 x 142 pixels) loses flux to a 64-pixel stamp, and says how much
    big = int(np.argmax(aegis.column("source_height_F814W")))
    assert aegis.column("cut_flux_F814W")[big] > 0.1 * aegis.column("flux_F814W")[big]


def test_cosmos_bands_are_matched_by_ident(aegis):
    t606, t814 = fits.getdata(F606, 1), fits.getdata(F814, 1)
    for i, ident in enumerate(aegis.ids):
        r606 = int(aegis.column("catalog_row_F606W")[i])
        r814 = int(aegis.column("catalog_row_F814W")[i])
        assert t606["IDENT"][r606] == ident and t814["IDENT"][r814] == ident
        assert aegis.column("mag_F606W")[i] == t606["MAG"][r606]
        assert aegis.column("mag_F814W")[i] == t814["MAG"][r814]
        # the same galaxy on the sky in both bands (to 0.01 arcsec)
        assert abs(t606["RA"][r606] - t814["RA"][r814]) * 3600 < 0.01
    assert aegis.units["ra"] == "deg" and aegis.units["mag_F814W"] == "mag"


def test_cosmos_bands_join_by_ident_whatever_the_row_order(tmp_path):
    from deepfield.data.importers import import_cosmos

    # the F814W catalog reversed, its last galaxy dropped: the join follows IDENT, not rows
    folder = real_copy(tmp_path)
    from astropy.table import Table

    data = Table.read(F814)[::-1][:4]
    data.write(folder / "AEGIS_F814w_catalog.fits", overwrite=True)
    store = import_cosmos([folder / "AEGIS_F606w_catalog.fits", folder / "AEGIS_F814w_catalog.fits"],
                          tmp_path / "s", size=32, progress=False)
    first = fits.getdata(F606, 1)["IDENT"]
    missing = data["IDENT"].tolist()
    assert store.ids.tolist() == [i for i in first if i in missing] and len(store) == 4
    assert store.meta["provenance"]["dropped_missing_band"] == {"F814W": 1}
    ref = fits.getdata(F814, 1)
    for i, ident in enumerate(store.ids):
        row = int(np.flatnonzero(ref["IDENT"] == ident)[0])
        assert store.column("mag_F814W")[i] == ref["MAG"][row]


def test_cosmos_psf_is_the_catalog_psf_on_an_odd_unit_sum_stamp(aegis):
    psf = aegis.read("psf").astype(np.float64)
    assert psf.shape == (5, 2, 25, 25)
    assert np.allclose(psf.sum(axis=(2, 3)), 1.0, atol=1e-5)
    for i in range(len(aegis)):
        for c, catalog in enumerate((F606, F814)):
            stamp = psf[i, c]
            assert np.unravel_index(stamp.argmax(), stamp.shape) == (12, 12)
            # the resampled PSF keeps the source PSF's second moments (pixels^2), to 5%
            src = source_stamp(catalog, int(aegis.column(f"catalog_row_{aegis.bands[c]}")[i]), "PSF")

            def width(img):
                yy, xx = np.mgrid[:img.shape[0], :img.shape[1]]
                img = img / img.sum()
                my, mx = (img * yy).sum(), (img * xx).sum()
                return (img * ((yy - my) ** 2 + (xx - mx) ** 2)).sum()

            core = src[src.shape[0] // 2 - 8:src.shape[0] // 2 + 8, src.shape[1] // 2 - 8:src.shape[1] // 2 + 8]
            mine = stamp[12 - 8:12 + 8, 12 - 8:12 + 8]
            assert width(mine) == pytest.approx(width(core), rel=0.05)


def test_cosmos_noise_ps_matches_the_catalog_variance_and_ivar(aegis):
    ps, ivar, mask = aegis.read("noise_ps").astype(np.float64), aegis.read("ivar"), aegis.read("mask")
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(64), np.fft.fftfreq(64), indexing="ij"))
    for c, band in enumerate(aegis.bands):
        variance = aegis.column(f"noise_variance_{band}")
        # the mean over modes of a power spectrum is the pixel variance (Parseval)
        assert np.allclose(ps[:, c].mean(axis=(1, 2)), variance, rtol=0.01)
        # ACS noise is correlated (drizzled): far more power at low than at high frequency
        assert (ps[:, c][:, k < 0.1].mean(axis=1) > 10 * ps[:, c][:, k > 0.5].mean(axis=1)).all()
        assert np.allclose(ivar[:, c][~mask[:, c]], np.repeat(1 / variance, (~mask[:, c]).sum(axis=(1, 2))),
                           rtol=1e-6)
        assert (ivar[:, c][mask[:, c]] == 0).all()


def test_noise_ps_from_the_cosmos_correlation_function_matches_galsims_noise():
    """GalSim's own COSMOS noise (getCOSMOSNoise on the 81x81 F814W correlation function) has the
    power spectrum we build, in every ring of |k|, to ~2% (300 stamps)."""
    import galsim

    from deepfield.data.importers.cosmos import noise_power_spectrum_from_cf

    cf_file = REAL / "acs_I_unrot_sci_20_cf.fits"
    size, variance = 48, 7e-6
    ps = noise_power_spectrum_from_cf(fits.getdata(cf_file), variance, size)
    noise = galsim.getCOSMOSNoise(file_name=str(cf_file), variance=variance, cosmos_scale=0.03,
                                  rng=galsim.BaseDeviate(5))
    power = np.zeros((size, size))
    for _ in range(300):
        image = galsim.ImageD(size, size, scale=0.03)
        image.addNoise(noise)
        power += np.abs(np.fft.fft2(image.array, norm="ortho")) ** 2 / 300
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij"))
    assert ps.mean() == pytest.approx(variance, rel=1e-3)
    for lo in np.arange(0.0, 0.7, 0.1):
        ring = (k >= lo) & (k < lo + 0.1)
        assert power[ring].mean() == pytest.approx(ps[ring].mean(), rel=0.03), lo


def test_cosmos_older_layout_without_noise_files(tmp_path):
    from deepfield.data.importers import import_cosmos

    store = import_cosmos(REAL / "test_catalog.fits", tmp_path / "old", size=32, progress=False)
    # both rows share IDENT 100533: ids number the rows, the IDENT stays in its column
    assert store.ids.tolist() == [0, 1] and store.column("ident").tolist() == [100533, 100533]
    assert "ra" not in store.columns and store.bands == ("F814W",)
    ps = store.read("noise_ps")
    variance = store.column("noise_variance_F814W")
    assert np.allclose(ps, variance[:, None, None, None], rtol=1e-6)  # white: no noise file


def test_cosmos_magnitude_cut_and_parametric_companion(tmp_path):
    from astropy.table import Table

    from deepfield.data.importers import import_cosmos

    folder = real_copy(tmp_path)
    table = fits.getdata(F814, 1)
    # a parametric catalog in COSMOSCatalog's layout, rows in another order, one galaxy missing
    order = [3, 0, 2, 1]  # galaxy 4 (IDENT 24216, MAG 22.8) has no fit
    rng = np.random.default_rng(0)
    hlr = rng.uniform(0.1, 1.0, (4, 3))
    flux = rng.uniform(1.0, 5.0, (4, 3))
    sersic = rng.uniform(0.5, 4.0, (4, 8))
    fit = Table({"IDENT": table["IDENT"][order], "hlr": hlr, "flux": flux, "sersicfit": sersic,
                 "zphot": rng.uniform(0.1, 2.0, 4), "mag_auto": table["MAG"][order]})
    fit["hlr"].unit = "arcsec"
    fit.write(folder / "AEGIS_F814w_catalog_fits.fits")
    store = import_cosmos(folder / "AEGIS_F814w_catalog.fits", tmp_path / "s", size=32, max_mag=24.72,
                          progress=False)
    keep = table["MAG"] <= 24.72
    assert 0 < keep.sum() < 5 and store.ids.tolist() == table["IDENT"][keep].tolist()
    assert (store.column("magnitude") <= 24.72).all()
    assert store.units["half_light_radius"] == "arcsec" and store.units["fit_hlr_0"] == "arcsec"
    assert np.isnan(store.column("half_light_radius")).sum() == 1
    for i, ident in enumerate(store.ids):
        j = [int(table["IDENT"][o]) for o in order].index(ident) if ident in table["IDENT"][order] else None
        if j is None:
            assert np.isnan(store.column("half_light_radius")[i])
            continue
        assert store.column("half_light_radius")[i] == pytest.approx(hlr[j, 0])
        assert store.column("sersic_n")[i] == pytest.approx(sersic[j, 2])
        assert store.column("bulge_fraction")[i] == pytest.approx(flux[j, 1] / (flux[j, 1] + flux[j, 2]))
        assert store.column("mag_auto")[i] == pytest.approx(store.column("magnitude")[i])


def test_cosmos_resume_after_a_crash_and_workers_give_the_same_store(tmp_path, monkeypatch, aegis):
    from deepfield.data import store as store_module
    from deepfield.data.importers import import_cosmos

    calls = {"n": 0}
    append = store_module.StoreWriter.append

    def crashing_append(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return append(self, *args, **kwargs)

    monkeypatch.setattr(store_module.StoreWriter, "append", crashing_append)
    out = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        import_cosmos([F606, F814], out, size=64, batch=2, progress=False)
    monkeypatch.undo()
    resumed = import_cosmos([F606, F814], out, size=64, batch=2, resume=True, progress=False)
    assert resumed.fingerprint == aegis.fingerprint
    parallel = import_cosmos([F606, F814], tmp_path / "p", size=64, batch=2, workers=2, progress=False)
    assert parallel.fingerprint == aegis.fingerprint


# bad input: named, exit code 2, nothing at OUT


def test_cosmos_missing_image_file_names_the_file_and_row(tmp_path, capsys):
    out = tmp_path / "s"
    code, text = cli(capsys, "import", "cosmos", REAL / "real_galaxy_catalog_23.5_example.fits", out,
                     "--no-progress")
    text = text.replace("\n", "")
    assert code == 2 and "real_galaxy_images.fits" in text and "row 0 (IDENT 100027)" in text
    assert "--dir" in text and nothing_at(out)


def test_cosmos_missing_psf_file(tmp_path):
    from deepfield.data.importers import import_cosmos

    folder = real_copy(tmp_path)
    (folder / "AEGIS_F814w_PSF_images_02.fits").unlink()
    rows = np.flatnonzero(np.char.strip(fits.getdata(F814, 1)["PSF_FILENAME"]) == "AEGIS_F814w_PSF_images_02.fits")
    ident = fits.getdata(F814, 1)["IDENT"][rows[0]]
    with pytest.raises(InputError, match=rf"PSF image .*AEGIS_F814w_PSF_images_02.fits.*row {rows[0]} \(IDENT {ident}\)"):
        import_cosmos(folder / "AEGIS_F814w_catalog.fits", tmp_path / "s", progress=False)
    assert nothing_at(tmp_path / "s")


@pytest.mark.parametrize("column,value,message", [
    ("GAL_HDU", 7, r"GAL_HDU 7 in row 1 \(IDENT 14886\) .* is out of range: .*has HDUs 0\.\.2"),
    ("PSF_HDU", -1, r"PSF_HDU -1 in row 1 \(IDENT 14886\) .* is out of range"),
    ("PIXEL_SCALE", 0.0, r"PIXEL_SCALE = 0\.0 in row 1 \(IDENT 14886\).*positive"),
    ("PIXEL_SCALE", -0.03, r"PIXEL_SCALE = -0\.03 in row 1 \(IDENT 14886\)"),
])
def test_cosmos_bad_catalog_rows_are_named(tmp_path, capsys, column, value, message):
    def edit(data):
        data[column][1] = value

    folder = real_copy(tmp_path, edit)
    out = tmp_path / "s"
    code, text = cli(capsys, "import", "cosmos", folder / "AEGIS_F814w_catalog.fits", out, "--no-progress")
    import re

    assert code == 2 and re.search(message, text.replace("\n", "")), text
    assert nothing_at(out)


def test_cosmos_nan_pixels_refused_or_masked(tmp_path, capsys):
    from deepfield.data.importers import import_cosmos

    folder = real_copy(tmp_path)
    table = fits.getdata(F814, 1)
    name, hdu = table["GAL_FILENAME"][2].strip(), int(table["GAL_HDU"][2])
    with fits.open(folder / name, mode="update") as hdul:
        h, w = hdul[hdu].data.shape
        hdul[hdu].data[h // 2, w // 2 - 3:w // 2] = np.nan
    out = tmp_path / "s"
    code, text = cli(capsys, "import", "cosmos", folder / "AEGIS_F814w_catalog.fits", out, "--no-progress")
    text = text.replace("\n", "")
    assert code == 2 and "row 2 (IDENT 9024)" in text and "3 NaN or inf pixels" in text and name in text
    assert nothing_at(out)
    store = import_cosmos(folder / "AEGIS_F814w_catalog.fits", out, nan_policy="zero", progress=False)
    mask, ivar, x = store.read("mask")[2, 0], store.read("ivar")[2, 0], store.read("x")[2, 0]
    assert store.column("nan_pixels_F814W").tolist() == [0, 0, 3, 0, 0]
    assert mask[32, 29:32].all() and (ivar[32, 29:32] == 0).all() and (x[32, 29:32] == 0).all()
    assert not mask[32, 32] and np.isfinite(store.read("x")).all()


# --------------------------------------------------------------------------------------
# survey cutouts (deepfield import cutouts): a mosaic with a rotated, non-square-pixel WCS

SKY_SIGMA = 0.5


def mosaic_wcs(nx=240, ny=200, rotation_deg=30.0, scales=(0.2, 0.25)):
    """A TAN WCS rotated by `rotation_deg`, pixels `scales` arcsec along x and y."""
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [nx / 2, ny / 2]
    t = np.radians(rotation_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    wcs.wcs.cd = rot @ np.diag([-scales[0], scales[1]]) / 3600.0
    return wcs


def gaussian_blob(nx, ny, x0, y0, flux, sigma=2.0):
    """A Gaussian integrated over each pixel (pixel i covers [i - 0.5, i + 0.5])."""
    from scipy.special import erf

    def axis(n, c):
        edges = np.arange(n + 1) - 0.5
        return 0.5 * np.diff(erf((edges - c) / (np.sqrt(2) * sigma)))

    return flux * np.outer(axis(ny, y0), axis(nx, x0))


def mosaic_files(folder, positions, fluxes, *, wcs=True, nx=240, ny=200, seed=0):
    """Mosaic (with noise SKY_SIGMA), weight map and catalog (ID, RA, Dec) of objects at pixel
    `positions` (x, y, 0-based); returns the paths and the WCS."""
    from astropy.table import Table

    w = mosaic_wcs(nx, ny)
    image = np.random.default_rng(seed).normal(0.0, SKY_SIGMA, (ny, nx))
    for (x0, y0), f in zip(positions, fluxes):
        image += gaussian_blob(nx, ny, x0, y0, f)
    header = w.to_header() if wcs else fits.Header()
    header["FILTER"] = "r"
    header["BUNIT"] = "nanomaggy"
    fits.PrimaryHDU(image.astype(np.float32), header=header).writeto(folder / "mosaic.fits")
    weight = np.full((ny, nx), 1 / SKY_SIGMA**2, np.float32)
    fits.PrimaryHDU(weight, header=header).writeto(folder / "weight.fits")
    ra, dec = w.all_pix2world(np.array(positions)[:, 0], np.array(positions)[:, 1], 0)
    table = Table({"ID": np.arange(100, 100 + len(positions)), "RA": ra, "Dec": dec, "flux_true": fluxes})
    table["RA"].unit = table["Dec"].unit = "deg"
    table.write(folder / "catalog.fits")
    return folder / "mosaic.fits", folder / "weight.fits", folder / "catalog.fits", w


POSITIONS = [(60.3, 50.7), (120.0, 100.0), (180.8, 140.2), (90.6, 150.45), (200.2, 60.9), (4.2, 100.3)]
FLUXES = [800.0, 1500.0, 600.0, 1000.0, 1200.0, 900.0]


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    return mosaic_files(tmp_path_factory.mktemp("mosaic"), POSITIONS, FLUXES)


def test_cutouts_land_each_object_on_the_centre_pixel_and_keep_its_flux(mosaic, tmp_path):
    from deepfield.data.importers import import_cutouts

    image, weight, catalog, _ = mosaic
    store = import_cutouts(image, tmp_path / "s", catalog=catalog, size=32, weight=weight, progress=False)
    assert store.ids.tolist() == list(range(100, 106)) and store.bands == ("r",)
    assert store.pixel_scale == pytest.approx(np.sqrt(0.2 * 0.25), rel=1e-9)
    assert store.meta["extra"]["pixel_scales_xy"] == pytest.approx([0.2, 0.25], rel=1e-9)
    x, ivar, mask = store.read("x").astype(np.float64), store.read("ivar"), store.read("mask")
    yy, xx = np.mgrid[:32, :32]
    for i, ((x0, y0), flux) in enumerate(zip(POSITIONS, FLUXES)):
        # the WCS round trip finds the pixel the object was put on
        assert store.column("x_pixel")[i] == pytest.approx(x0, abs=1e-6)
        assert store.column("y_pixel")[i] == pytest.approx(y0, abs=1e-6)
        dx, dy = store.column("offset_x")[i], store.column("offset_y")[i]
        assert abs(dx) <= 0.5 and abs(dy) <= 0.5
        aperture = (np.hypot(xx - 16 - dx, yy - 16 - dy) < 8) & ~mask[i, 0]
        stamp = x[i, 0] * aperture
        # centroid on the middle pixel plus the recorded sub-pixel offset
        cy, cx = (stamp * yy).sum() / stamp.sum(), (stamp * xx).sum() / stamp.sum()
        if i != 5:  # the last object sits 4 pixels from the mosaic's edge: half its stamp is off
            assert cx == pytest.approx(16 + dx, abs=0.06) and cy == pytest.approx(16 + dy, abs=0.06)
            # flux in an 8-pixel aperture (99.97% of a sigma = 2 px Gaussian), noise ~7 counts
            assert stamp.sum() == pytest.approx(flux, abs=4 * SKY_SIGMA * np.sqrt(aperture.sum()) + 0.001 * flux)
            assert not mask[i].any() and np.allclose(ivar[i], 1 / SKY_SIGMA**2)
    # the edge object: the 16 - 4 = 12 columns left of the mosaic are masked, ivar 0, x 0
    assert mask[5, 0, :, :12].all() and not mask[5, 0, :, 12:].any()
    assert (ivar[5, 0, :, :12] == 0).all() and (x[5, 0, :, :12] == 0).all()
    assert store.column("masked_fraction")[5] == pytest.approx(12 / 32)
    assert store.column("flux_true").tolist() == FLUXES and store.units["RA"] == "deg"


def test_cutouts_drop_edge_objects_and_estimate_the_sky_noise(mosaic, tmp_path):
    from deepfield.data.importers import import_cutouts

    image, _, catalog, _ = mosaic
    store = import_cutouts(image, tmp_path / "s", catalog=catalog, size=32, edge="drop", progress=False)
    assert store.ids.tolist() == list(range(100, 105))
    assert store.meta["provenance"]["dropped_at_edge"] == 1
    # no weight map: ivar from the sigma-clipped sky noise, the objects clipped away
    assert store.meta["extra"]["sky_sigma"] == pytest.approx(SKY_SIGMA, rel=0.02)
    assert np.allclose(store.read("ivar"), 1 / store.meta["extra"]["sky_sigma"] ** 2)


def test_cutouts_psf_shared_or_one_per_catalog_row(mosaic, tmp_path):
    from deepfield.data.importers import import_cutouts

    image, weight, catalog, _ = mosaic
    shared = gaussian_blob(15, 15, 7, 7, 3.0, sigma=1.5)
    fits.PrimaryHDU(shared).writeto(tmp_path / "psf.fits")
    store = import_cutouts(image, tmp_path / "a", catalog=catalog, size=32, psf=tmp_path / "psf.fits",
                           progress=False)
    assert store.shared_arrays == ("psf",)
    psf = store.read("psf")  # (N, 1, 15, 15), the one PSF broadcast
    assert psf.shape == (6, 1, 15, 15) and psf[0, 0].sum() == pytest.approx(1.0, rel=1e-6)
    assert np.allclose(psf[0, 0], shared / shared.sum(), rtol=1e-5)
    # one even (16 x 16) PSF per catalog row, each of another width: resampled to odd 17 x 17 stamps
    widths = np.linspace(1.0, 2.0, len(POSITIONS))
    cube = np.stack([gaussian_blob(16, 16, 7.5, 7.5, 1.0, sigma=s) for s in widths])
    fits.PrimaryHDU(cube).writeto(tmp_path / "psfs.fits")
    store = import_cutouts(image, tmp_path / "b", catalog=catalog, size=32, psf=tmp_path / "psfs.fits",
                           edge="drop", progress=False)
    psfs = store.read("psf")[:, 0].astype(np.float64)
    assert psfs.shape == (5, 17, 17) and np.allclose(psfs.sum(axis=(1, 2)), 1.0, atol=1e-5)
    yy, xx = np.mgrid[:17, :17]
    for p, s in zip(psfs, widths[:5]):  # the edge object (row 5) was dropped: rows follow the catalog
        assert np.unravel_index(p.argmax(), p.shape) == (8, 8)
        var = (p * (xx - 8) ** 2).sum()
        assert np.sqrt(var) == pytest.approx(np.sqrt(s**2 + 1 / 12), rel=0.05)


def test_cli_import_cutouts(mosaic, tmp_path, capsys):
    image, weight, catalog, _ = mosaic
    out = tmp_path / "s"
    code, text = cli(capsys, "import", "cutouts", image, out, "--catalog", catalog, "--size", 24,
                     "--weight", weight, "--ra-col", "ra", "--dec-col", "DEC", "--id-col", "id",
                     "--no-progress")
    assert code == 0 and "n=6" in text and "(1, 24, 24)" in text and "bands r" in text
    assert open_store(out).ids.tolist() == list(range(100, 106))


def test_cutouts_bad_input_is_named(tmp_path, capsys, mosaic):
    image, weight, catalog, _ = mosaic
    # a mosaic without WCS
    folder = tmp_path / "nowcs"
    folder.mkdir()
    bare, _, bare_catalog, _ = mosaic_files(folder, POSITIONS[:2], FLUXES[:2], wcs=False)
    out = tmp_path / "s"
    code, text = cli(capsys, "import", "cutouts", bare, out, "--catalog", catalog, "--no-progress")
    assert code == 2 and "no celestial WCS" in text.replace("\n", "") and nothing_at(out)
    # a catalog position outside the mosaic
    from astropy.table import Table

    off = Table.read(catalog)
    off["RA"][2] += 1.0  # a degree away
    off.write(tmp_path / "off.fits")
    code, text = cli(capsys, "import", "cutouts", image, out, "--catalog", tmp_path / "off.fits", "--no-progress")
    text = text.replace("\n", "")
    assert code == 2 and "row 2 (id 102)" in text and "outside the 240 x 200 mosaic" in text
    assert "--edge drop" in text and nothing_at(out)
    # a weight map of another shape
    fits.PrimaryHDU(np.ones((100, 100), np.float32)).writeto(tmp_path / "w.fits")
    code, text = cli(capsys, "import", "cutouts", image, out, "--catalog", catalog, "--weight",
                     tmp_path / "w.fits", "--no-progress")
    text = text.replace("\n", "")
    assert code == 2 and "(100, 100)" in text and "(200, 240)" in text and nothing_at(out)
    # a missing column
    code, text = cli(capsys, "import", "cutouts", image, out, "--catalog", catalog, "--ra-col", "alpha",
                     "--no-progress")
    assert code == 2 and "no ra column 'alpha'" in text.replace("\n", "") and nothing_at(out)


def test_cosmos_stamp_reader_agrees_with_astropy(tmp_path):
    """The importer finds HDUs by reading only the cards that size them; every stamp it reads
    equals astropy's, scaled integers included, and files it does not handle go to astropy."""
    from deepfield.data.importers.cosmos import _ImageFiles, _scan_hdus

    ints = np.arange(-600, 600, dtype=np.int16).reshape(30, 40)
    scaled = fits.PrimaryHDU(ints)
    scaled.header["BSCALE"], scaled.header["BZERO"] = 0.5, 10.0
    fits.HDUList([scaled, fits.ImageHDU(np.ones((3, 5), ">f8"))]).writeto(tmp_path / "scaled.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(np.ones((16, 16), np.float32))]).writeto(tmp_path / "comp.fits")
    reader = _ImageFiles(keep=2)
    files = sorted(REAL.glob("AEGIS_*images*.fits")) + [REAL / "test_images.fits", tmp_path / "scaled.fits",
                                                        tmp_path / "comp.fits"]
    for path in files:
        with fits.open(path) as hdul:
            for k, hdu in enumerate(hdul):
                if hdu.is_image and hdu.data is not None:
                    assert np.array_equal(reader.read(str(path), k), np.asarray(hdu.data, dtype=np.float64)), (path, k)
    assert _scan_hdus(str(tmp_path / "comp.fits")) is None
    assert reader.read(str(tmp_path / "scaled.fits"), 0)[0, 0] == -600 * 0.5 + 10.0
    reader.close()


def test_cutouts_psf_from_a_psfex_model_varies_across_the_mosaic(mosaic, tmp_path):
    """A PSFEx model of degree 1 in (X_IMAGE, Y_IMAGE): the PSF widens from left to right."""
    from deepfield.data.importers import import_cutouts

    image, _, catalog, _ = mosaic
    narrow = gaussian_blob(25, 25, 12, 12, 1.0, sigma=1.2)
    wide = gaussian_blob(25, 25, 12, 12, 1.0, sigma=2.4)
    basis = np.stack([0.5 * (narrow + wide), 0.5 * (wide - narrow), np.zeros((25, 25))])  # 1, x, y
    column = fits.Column("PSF_MASK", format=f"{basis.size}E", dim="(25, 25, 3)", array=basis[None].astype(np.float32))
    table = fits.BinTableHDU.from_columns([column])
    for key, value in {"POLNAXIS": 2, "POLNAME1": "X_IMAGE", "POLNAME2": "Y_IMAGE", "POLZERO1": 121.0,
                       "POLSCAL1": 120.0, "POLZERO2": 101.0, "POLSCAL2": 100.0, "POLNGRP": 1,
                       "POLDEG1": 1, "PSF_SAMP": 1.0, "PSFNAXIS": 3}.items():
        table.header[key] = value
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp_path / "model.psf")
    store = import_cutouts(image, tmp_path / "s", catalog=catalog, size=32, psf=tmp_path / "model.psf",
                           edge="drop", progress=False)
    psf = store.read("psf")[:, 0].astype(np.float64)
    assert psf.shape == (5, 25, 25) and np.allclose(psf.sum(axis=(1, 2)), 1.0, atol=1e-5)
    for k, x0 in enumerate(store.column("x_pixel")):
        t = (x0 + 1 - 121.0) / 120.0  # PSFEx's 1-based pixel, normalised
        expected = 0.5 * (narrow + wide) + t * 0.5 * (wide - narrow)
        assert np.allclose(psf[k], expected / expected.sum(), atol=1e-6)
    widths = [np.sqrt((p * (np.arange(25) - 12) ** 2).sum(axis=0).sum()) for p in psf]
    order = np.argsort(store.column("x_pixel"))
    assert np.all(np.diff(np.asarray(widths)[order]) > 0)  # wider to the right


def test_cutouts_resume_after_a_crash_gives_the_same_store(mosaic, tmp_path, monkeypatch):
    from deepfield.data import store as store_module
    from deepfield.data.importers import import_cutouts

    image, weight, catalog, _ = mosaic
    whole = import_cutouts(image, tmp_path / "whole", catalog=catalog, size=24, weight=weight, batch=2,
                           progress=False)
    calls = {"n": 0}
    append = store_module.StoreWriter.append

    def crashing_append(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return append(self, *args, **kwargs)

    monkeypatch.setattr(store_module.StoreWriter, "append", crashing_append)
    with pytest.raises(KeyboardInterrupt):
        import_cutouts(image, tmp_path / "s", catalog=catalog, size=24, weight=weight, batch=2, progress=False)
    monkeypatch.undo()
    resumed = import_cutouts(image, tmp_path / "s", catalog=catalog, size=24, weight=weight, batch=2,
                             resume=True, progress=False)
    assert resumed.fingerprint == whole.fingerprint and len(resumed) == 6


def test_cli_import_options_before_the_source_still_mean_a_file(tmp_path, capsys):
    src = tmp_path / "cube.fits"
    cube_file(src, header={"PIXSCALE": 0.2})
    code, text = cli(capsys, "import", "--format", "fits", src, tmp_path / "s", "--bands", "g,r,i")
    assert code == 0 and "n=6" in text
    code, text = cli(capsys, "import", "file", src, tmp_path / "t", "--bands", "g,r,i")
    assert code == 0 and open_store(tmp_path / "t").fingerprint == open_store(tmp_path / "s").fingerprint
