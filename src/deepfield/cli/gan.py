"""`deepfield translate`: map a store through a CycleGAN or a deconvolver (and check it against paired truth)."""

from __future__ import annotations

from pathlib import Path

import typer

from deepfield.cli._app import app, console


@app.command()
def translate(
    model_dir: Path = typer.Argument(..., help="Model folder of a CycleGAN (deepfield train cyclegan) or a "
                                               "deconvolver (deepfield train deconvolver)."),
    store: Path = typer.Option(..., "--store", "-s", help="Store to translate (domain A for a2b, B for b2a)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output store of translated images (same ids and catalog)."),
    direction: str = typer.Option("a2b", "--direction", help="a2b (A -> B, e.g. ground -> space) or b2a."),
    where: str = typer.Option(None, "--where", help="Catalog query, e.g. 'magnitude < 23'."),
    split: str = typer.Option(None, "--split", help="Only the model's train, val or test objects."),
    resample: bool = typer.Option(False, "--resample", help="Resample a store on another pixel grid onto the model's."),
    truth: Path = typer.Option(None, "--truth", help="Store of the same objects as the target survey sees them: "
                                                     "print MSE, flux and size errors vs a deconvolution baseline."),
    psf_fwhm: float = typer.Option(None, "--psf-fwhm", help="Deconvolvers: FWHM (arcsec) of the target survey's "
                                                            "Gaussian PSF the estimate is drawn through."),
    batch_size: int = typer.Option(256, "--batch-size"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Translate a store from one survey's look to the other's through a CycleGAN, or deconvolve it
    and redraw it through a sharper PSF (--psf-fwhm) with a deconvolver."""
    import deepfield
    from deepfield.data.store import open_store
    from deepfield.tasks import resolve_indices
    from deepfield.tasks.translate import evaluate_translation, translate_store

    model = deepfield.load(model_dir)
    s = open_store(store)
    idx = resolve_indices(s, where, split, getattr(model, "record", None)) if (where or split) else None
    target_psf = None
    if psf_fwhm is not None:
        from deepfield.physics import gaussian_psf

        if s.pixel_scale is None:
            raise typer.BadParameter(f"store {store} has no pixel scale, so --psf-fwhm (arcsec) cannot be drawn")
        target_psf = gaussian_psf(psf_fwhm, size=25, pixel_scale=s.pixel_scale)
    translate_store(model, s, out, direction=direction, indices=idx, batch_size=batch_size, resample=resample,
                    target_psf=target_psf, overwrite=overwrite, progress=progress)
    n = len(s) if idx is None else idx.size
    console.print(f"[green]{n} images translated ({direction}) to[/] {out}")
    if truth is None:
        return
    target = open_store(truth)
    result = evaluate_translation(model, s, target, direction=direction, indices=idx,
                                  target_array="clean" if target.has("truth") and target.has("psf") else "x",
                                  batch_size=batch_size, progress=progress)
    console.print(f"[bold]against {truth} ({result['target']}), {result['n']} objects[/]")
    print("| method | MSE | normalised MSE | flux bias | flux scatter | size bias | size scatter | HSM failed |")
    print("|---|---|---|---|---|---|---|---|")
    for name, m in result["methods"].items():
        print(f"| {name} | {m['mse']:.4g} | {m['normalised_mse']:.4g} | {m['flux_bias']:+.3f} | {m['flux_scatter']:.3f} "
              f"| {m['size_bias']:+.3f} | {m['size_scatter']:.3f} | {m['hsm_failed']:.2f} |")
