"""`deepfield info`: what is in a store."""

from __future__ import annotations

from pathlib import Path

import typer

from deepfield.cli._app import app


@app.command()
def info(store: Path = typer.Argument(..., help="Store directory."),
         json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON.")):
    """Print a store's shapes, bands, pixel scale, catalog columns and summary statistics."""
    import json

    from rich.console import Console
    from rich.table import Table

    from deepfield.data.store import open_store

    s = open_store(store).summary()
    if json_out:
        print(json.dumps(s, indent=2))
        return
    con = Console()
    con.print(f"[bold]{s['path']}[/]  {s['n']} objects, kind {s['kind']}, sample shape {tuple(s['sample_shape'])}")
    if s["bands"]:
        con.print(f"bands: {', '.join(s['bands'])}   pixel scale: {s['pixel_scale_arcsec']} arcsec/pixel")
    if "wavelength_angstrom" in s:
        lo, hi, n = s["wavelength_angstrom"]
        con.print(f"wavelength: {lo:.1f}-{hi:.1f} Angstrom, {n} points")
    arrays = ", ".join(f"{k} {tuple(v)}" for k, v in s["arrays"].items())
    shared = ", ".join(f"{k} {tuple(v)} (shared)" for k, v in s["shared"].items())
    con.print(f"arrays: {arrays}{', ' + shared if shared else ''}")
    con.print(f"fingerprint: {s['fingerprint']}")
    px = Table(title="pixel values", show_edge=False)
    for col in ("band", "mean", "std", "min", "max"):
        px.add_column(col, justify="right")
    for band, st in s["pixel_stats"].items():
        px.add_row(band, *(f"{st[k]:.4g}" for k in ("mean", "std", "min", "max")))
    con.print(px)
    cat = Table(title="catalog", show_edge=False)
    for col in ("column", "unit", "mean", "std", "min", "max"):
        cat.add_column(col, justify="right" if col not in ("column", "unit") else "left")
    for name, st in s["columns"].items():
        if "mean" in st:
            cat.add_row(name, st["unit"], *(f"{st[k]:.4g}" for k in ("mean", "std", "min", "max")))
        else:
            cat.add_row(name, st["unit"], ", ".join(f"{k}: {v}" for k, v in st.get("values", {}).items()), "", "", "")
    con.print(cat)


def _ranges(rows: list[int]) -> str:
    """[3, 4, 5, 9] -> 'rows 3-5, 9' (at most 10 ranges)."""
    spans: list[list[int]] = []
    for r in rows:
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    text = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans[:10])
    return f"rows {text}" + (f" and {len(spans) - 10} more ranges" if len(spans) > 10 else "")


@app.command()
def verify(store: Path = typer.Argument(..., help="Store directory.")):
    """Check every row of a store against the digest written with it (exit 0 whole, 2 damaged)."""
    from deepfield.data.store import open_store
    from deepfield.errors import StoreError

    s = open_store(store)  # refuses missing chunks, naming them
    bad = s.verify()
    if bad:
        raise StoreError(f"{s.path}: {len(bad)} of {len(s)} rows do not match the digests written with "
                         f"them ({_ranges(bad)}); a chunk is corrupt. Re-create the store (or restore it "
                         "from a backup); do not train or encode from it")
    print(f"{s.path}: all {len(s)} rows match their digests (fingerprint {s.fingerprint})")
