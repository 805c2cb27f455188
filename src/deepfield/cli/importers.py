"""`deepfield import SOURCE OUT`: FITS, HDF5, NumPy or scikit-learn data into a store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from deepfield.cli._app import app

__all__ = ["import_command"]


@app.command("import")
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
    """Import survey data into a store (atomic: bad input leaves nothing at OUT)."""
    from rich.console import Console

    from deepfield.data.importers import import_data

    given = dict(hdu=hdu, x=x, catalog=catalog, psf=psf, ivar=ivar, bands=bands,
                 pixel_scale=pixel_scale, wavelength=wavelength, kind=kind, units=units,
                 id_column=id_column, nan_policy=nan_policy, batch_rows=batch_rows)
    options = {k: v for k, v in given.items() if v is not None}
    store = import_data(source, out, format=format, overwrite=overwrite, **options)
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
