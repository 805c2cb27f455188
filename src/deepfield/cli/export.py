"""`deepfield export`: a store's samples or codes as FITS files or PNG thumbnails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from deepfield.cli._app import app, console


def _asinh_stretch(img: np.ndarray) -> np.ndarray:
    """(H, W) pixels -> uint8 with an asinh stretch: faint wings and bright cores both visible."""
    lo, hi = np.percentile(img, [1.0, 99.5])
    scale = max(float(hi - lo), 1e-12)
    soft = 0.1 * scale  # the asinh knee: linear below it, logarithmic above
    v = np.arcsinh(np.clip(img - lo, 0, None) / soft) / np.arcsinh(scale / soft)
    return (np.clip(v, 0, 1) * 255 + 0.5).astype(np.uint8)


def export_fits(store, rows: np.ndarray, out: Path) -> list[Path]:
    """One FITS file per band (image stores: a (N, H, W) cube plus the catalog as a BINTABLE),
    or one FITS table (codes/table and spectrum stores). Returns the files written."""
    from astropy.io import fits
    from astropy.table import Table

    from deepfield._atomic import write_atomic

    catalog = Table(store.catalog.take(rows).to_pydict())
    for name, unit in store.units.items():
        if name in catalog.colnames:
            catalog[name].unit = unit
    written = []
    x = store.read("x", rows)
    if store.kind == "image":
        for c, band in enumerate(store.bands or [f"ch{c}" for c in range(x.shape[1])]):
            primary = fits.PrimaryHDU(np.ascontiguousarray(x[:, c]))
            primary.header["BAND"] = (band, "photometric band of this cube")
            primary.header["BANDS"] = (",".join(store.bands), "all bands of the store")
            if store.pixel_scale is not None:
                primary.header["PIXSCALE"] = (float(store.pixel_scale), "arcsec/pixel")
            primary.header["FPRINT"] = (store.fingerprint, "deepfield store fingerprint")
            primary.header["COMMENT"] = "axis 3: objects in catalog order; no WCS (cutouts)"
            hdul = fits.HDUList([primary, fits.BinTableHDU(catalog, name="CATALOG")])
            path = out / f"{store.path.name}_{band}.fits"
            write_atomic(path, lambda tmp, h=hdul: h.writeto(tmp))
            written.append(path)
    else:
        table = catalog.copy()
        table["x"] = x.reshape(len(rows), -1)
        hdu = fits.BinTableHDU(table, name="CODES" if store.kind == "table" else "SPECTRA")
        hdu.header["FPRINT"] = (store.fingerprint, "deepfield store fingerprint")
        path = out / f"{store.path.name}.fits"
        write_atomic(path, lambda tmp: fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp))
        written.append(path)
    return written


def export_png(store, rows: np.ndarray, out: Path, columns: int = 10) -> list[Path]:
    """An asinh-stretched PNG per object (first band, or RGB from the first three bands) and a
    contact sheet of them all. Returns the files written."""
    from PIL import Image

    from deepfield._atomic import write_atomic
    from deepfield.errors import InputError

    if store.kind != "image":
        raise InputError(f"{store.path} holds {store.kind} objects, not images: export it with --to fits")
    x = store.read("x", rows)
    ids = store.ids[rows]
    thumbs = []
    written = []
    for img, oid in zip(x, ids):
        planes = [_asinh_stretch(img[c]) for c in range(min(3, img.shape[0]))]
        pic = Image.fromarray(np.stack(planes[::-1], -1) if len(planes) == 3 else planes[0])
        path = out / f"{int(oid)}.png"
        write_atomic(path, lambda tmp, p=pic: p.save(tmp, format="PNG"))
        thumbs.append(pic)
        written.append(path)
    if thumbs:
        h, w = x.shape[-2:]
        cols = min(columns, len(thumbs))
        sheet = Image.new(thumbs[0].mode, (cols * w, -(-len(thumbs) // cols) * h))
        for i, pic in enumerate(thumbs):
            sheet.paste(pic, ((i % cols) * w, (i // cols) * h))
        path = out / "contact_sheet.png"
        write_atomic(path, lambda tmp: sheet.save(tmp, format="PNG"))
        written.append(path)
    return written


@app.command()
def export(store: Path = typer.Argument(..., help="Store directory (images, spectra or codes)."),
           to: str = typer.Option(..., "--to", help="fits or png."),
           out: Path = typer.Option(None, "--out", "-o", help="Folder to write into (default STORE_export)."),
           rows: str = typer.Option(None, "--rows", help="Row range START:STOP, e.g. 0:100."),
           where: str = typer.Option(None, "--where", help="Catalog query, e.g. 'magnitude < 23'.")):
    """Write a store's objects as FITS (a cube per band with the catalog) or PNG thumbnails."""
    from deepfield.data.store import open_store
    from deepfield.errors import InputError

    if to not in ("fits", "png"):
        raise InputError(f"--to {to!r}: choose fits or png")
    s = open_store(store)
    idx = s.select(where=where)
    if rows:
        try:
            start, stop = (int(v) if v else None for v in rows.split(":"))
        except ValueError:
            raise InputError(f"--rows {rows!r}: give START:STOP, e.g. 0:100") from None
        idx = idx[(idx >= (start or 0)) & (idx < (len(s) if stop is None else stop))]
    if idx.size == 0:
        raise InputError(f"no objects of {s.path} are selected; loosen --where or --rows")
    out = out or s.path.with_name(f"{s.path.name}_export")
    out.mkdir(parents=True, exist_ok=True)
    files = export_fits(s, idx, out) if to == "fits" else export_png(s, idx, out)
    console.print(f"[green]{idx.size} objects written as {len(files)} {to.upper()} files to[/] {out}")
