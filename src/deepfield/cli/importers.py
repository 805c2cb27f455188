"""`deepfield import`: survey data into a store.

- `deepfield import SOURCE OUT` (the same as `deepfield import file SOURCE OUT`): FITS, HDF5,
  NumPy or scikit-learn data;
- `deepfield import cosmos CATALOG[,CATALOG2,...] OUT`: GalSim RealGalaxyCatalogs (COSMOS);
- `deepfield import cutouts MOSAIC.fits OUT --catalog CAT`: stamps cut from a survey image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from deepfield.cli._app import app

__all__ = ["import_command", "cosmos_command", "cutouts_command"]


class _FileByDefault(TyperGroup):
    """`deepfield import SOURCE OUT` keeps working: a first argument that names no subcommand
    is the SOURCE of `deepfield import file`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["file", *args]
        return super().parse_args(ctx, args)


import_app = typer.Typer(cls=_FileByDefault, no_args_is_help=True,
                         help="Import survey data into a store: files (the default), COSMOS "
                              "catalogs, or cutouts from a mosaic.")
app.add_typer(import_app, name="import")


def _summary(store) -> None:
    from rich.console import Console

    extras = []
    if store.bands:
        extras.append(f"bands {','.join(store.bands)}")
    if store.pixel_scale is not None:
        extras.append(f"{store.pixel_scale:.4g} arcsec/pixel")
    arrays = [a for a in store.array_names if a != "x"] + [f"{a} (shared)" for a in store.shared_arrays]
    if arrays:
        extras.append(f"arrays {', '.join(arrays)}")
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"wrote {store.path}")
    console.print(f"n={len(store)} {store.kind} shape {store.sample_shape}; columns "
                  f"{', '.join(store.columns)}" + (f"; {'; '.join(extras)}" if extras else ""))


@import_app.command("file")
def import_command(
    source: str = typer.Argument(..., help="FITS cube, folder of FITS stamps, .h5/.hdf5, "
                                 ".npy/.npz, or sklearn:iris / sklearn:digits."),
    out: Path = typer.Argument(..., help="Store directory to create."),
    format: Optional[str] = typer.Option(None, "--format", help="fits, hdf5, numpy or sklearn "
                                         "(default: from the extension)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store at OUT."),
    hdu: Optional[str] = typer.Option(None, "--hdu", help="FITS: HDU (name or index) with the images."),
    x: Optional[str] = typer.Option(None, "--x", help="HDF5 dataset / npz member with the pixels."),
    catalog: Optional[str] = typer.Option(None, "--catalog", help="Catalog: a FITS table, CSV, "
                                          "ECSV or Parquet file, or an HDU/group inside SOURCE; "
                                          "'' for none."),
    psf: Optional[str] = typer.Option(None, "--psf", help="PSF file or name inside SOURCE: "
                                      "(h, w)/(C, h, w) shared or (N, C, h, w) per object."),
    ivar: Optional[str] = typer.Option(None, "--ivar", help="Inverse-variance file or name inside SOURCE."),
    bands: Optional[str] = typer.Option(None, "--bands", help="Band names, one per channel: g,r,i."),
    pixel_scale: Optional[float] = typer.Option(None, "--pixel-scale", help="Arcsec per pixel "
                                                "(default: from the FITS header)."),
    wavelength: Optional[str] = typer.Option(None, "--wavelength", help="Spectra: wavelength grid "
                                             "(Angstrom): a name inside SOURCE or a file."),
    kind: Optional[str] = typer.Option(None, "--kind", help="For 2-D (N, L) data: spectrum or table."),
    units: Optional[str] = typer.Option(None, "--units", help="Catalog units: col=unit,col=unit."),
    id_column: Optional[str] = typer.Option(None, "--id-column", help="Catalog column with integer "
                                            "ids (default: 'id'); '' numbers objects 0..N-1."),
    nan_policy: Optional[str] = typer.Option(None, "--nan-policy", help="raise (default) or zero: "
                                             "set NaN/inf pixels to 0 and record a mask (True = bad)."),
    batch_rows: Optional[int] = typer.Option(None, "--batch-rows", help="Objects per batch (default 4096)."),
) -> None:
    """Import a FITS, HDF5, NumPy or scikit-learn data set (atomic: bad input leaves nothing at OUT)."""
    from deepfield.data.importers import import_data

    given = dict(hdu=hdu, x=x, catalog=catalog, psf=psf, ivar=ivar, bands=bands,
                 pixel_scale=pixel_scale, wavelength=wavelength, kind=kind, units=units,
                 id_column=id_column, nan_policy=nan_policy, batch_rows=batch_rows)
    options = {k: v for k, v in given.items() if v is not None}
    store = import_data(source, out, format=format, overwrite=overwrite, **options)
    _summary(store)


@import_app.command("cosmos")
def cosmos_command(
    catalogs: str = typer.Argument(..., help="GalSim RealGalaxyCatalog FITS file(s); several bands "
                                   "of the same galaxies comma-separated (joined by IDENT)."),
    out: Path = typer.Argument(..., help="Store directory to create."),
    dir: Optional[Path] = typer.Option(None, "--dir", help="Folder of the image, PSF and noise "
                                       "files (default: the catalog's folder)."),
    size: int = typer.Option(64, "--size", help="Stamp side in pixels."),
    psf_size: int = typer.Option(25, "--psf-size", help="PSF stamp side in pixels (odd)."),
    max_mag: Optional[float] = typer.Option(None, "--max-mag", help="Keep MAG <= this (first catalog), "
                                            "e.g. 25.2."),
    nan_policy: str = typer.Option("raise", "--nan-policy", help="raise (default) or zero: set NaN "
                                   "pixels to 0 under the mask."),
    workers: int = typer.Option(1, "--workers", help="Processes cutting stamps."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store at OUT."),
    resume: bool = typer.Option(False, "--resume", help="Finish an interrupted import at OUT."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Import real galaxies from GalSim RealGalaxyCatalogs (COSMOS): stamps, PSF, noise, catalog."""
    from deepfield.data.importers import import_cosmos

    store = import_cosmos(catalogs, out, dir=dir, size=size, psf_size=psf_size, max_mag=max_mag,
                          nan_policy=nan_policy, workers=workers, overwrite=overwrite, resume=resume,
                          progress=progress)
    _summary(store)


@import_app.command("cutouts")
def cutouts_command(
    mosaic: Path = typer.Argument(..., help="Survey image (FITS) with a celestial WCS."),
    out: Path = typer.Argument(..., help="Store directory to create."),
    catalog: Path = typer.Option(..., "--catalog", help="Objects to cut: FITS table, CSV, ECSV or Parquet "
                                 "with RA/Dec in degrees."),
    size: int = typer.Option(64, "--size", help="Stamp side in pixels."),
    weight: Optional[Path] = typer.Option(None, "--weight", help="Inverse-variance map of the mosaic's "
                                          "shape (default: a sky-noise estimate)."),
    psf: Optional[Path] = typer.Option(None, "--psf", help="PSF image (shared), (N, h, w) cube (one "
                                       "per catalog row) or PSFEx .psf model."),
    ra_col: Optional[str] = typer.Option(None, "--ra-col", help="RA column (default: ra, any case)."),
    dec_col: Optional[str] = typer.Option(None, "--dec-col", help="Dec column (default: dec, any case)."),
    id_col: Optional[str] = typer.Option(None, "--id-col", help="Integer id column (default: id if "
                                         "present, else row numbers)."),
    edge: str = typer.Option("mask", "--edge", help="mask: keep stamps running off the mosaic, "
                             "masked; drop: leave them out."),
    band: Optional[str] = typer.Option(None, "--band", help="Band name (default: header FILTER/BAND)."),
    hdu: Optional[str] = typer.Option(None, "--hdu", help="HDU (name or index) of the mosaic."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store at OUT."),
    resume: bool = typer.Option(False, "--resume", help="Finish an interrupted import at OUT."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Cut stamps of catalog objects out of a survey mosaic through its WCS (ivar, mask, PSF)."""
    from deepfield.data.importers import import_cutouts

    store = import_cutouts(mosaic, out, catalog=catalog, size=size, weight=weight, psf=psf,
                           ra_col=ra_col, dec_col=dec_col, id_col=id_col, edge=edge, band=band,
                           hdu=hdu, overwrite=overwrite, resume=resume, progress=progress)
    _summary(store)
