"""`deepfield encode`, `reconstruct` and `sample`: apply a model folder to a store, or draw from it."""

from __future__ import annotations

from pathlib import Path

import typer

from deepfield.cli._app import app, console


def _load(model_dir: Path, store_path: Path):
    import deepfield
    from deepfield.data.store import open_store

    return deepfield.load(model_dir), open_store(store_path)


def _selection(model_dir: Path, store_path: Path, where: str | None, split: str | None):
    """Model, store and the rows chosen by --where (catalog query) and --split (the model's split)."""
    from deepfield.tasks import resolve_indices

    model, store = _load(model_dir, store_path)
    return model, store, resolve_indices(store, where, split, getattr(model, "record", None))


def _codes_staging(out: Path) -> Path:
    """Where `encode` builds the codes store it turns into the Parquet table `out`."""
    return out.with_name(f".{out.name}.codes-partial")


@app.command()
def encode(
    model_dir: Path = typer.Argument(..., help="Model folder."),
    store: Path = typer.Option(..., "--store", "-s", help="Store to encode."),
    out: Path = typer.Option(..., "--out", "-o", help="Output: a codes store, or a .parquet table."),
    where: str = typer.Option(None, "--where", help="Catalog query, e.g. 'magnitude < 23'."),
    split: str = typer.Option(None, "--split", help="Only the model's train, val or test objects."),
    batch_size: int = typer.Option(256, "--batch-size"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Encode a store into latent codes keyed by id (a store, or Parquet if OUT ends in .parquet)."""
    import shutil

    from deepfield.tasks import codes_to_parquet, encode_store

    model, s, idx = _selection(model_dir, store, where, split)
    if out.suffix == ".parquet":
        # staged beside OUT under a hidden name, not in /tmp: a SIGKILL cannot run cleanup, and
        # the next run clears what a killed one left
        tmp = _codes_staging(out)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            codes = encode_store(model, s, tmp / "codes", indices=idx, batch_size=batch_size, progress=progress)
            codes_to_parquet(codes, out, overwrite=overwrite)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        console.print(f"[green]{idx.size} codes of length {model.latent_dim} written to[/] {out}")
        return
    encode_store(model, s, out, indices=idx, batch_size=batch_size, overwrite=overwrite, progress=progress)
    console.print(f"[green]{idx.size} codes of length {model.latent_dim} written to[/] {out}")


@app.command()
def reconstruct(
    model_dir: Path = typer.Argument(..., help="Model folder."),
    store: Path = typer.Option(..., "--store", "-s", help="Store to reconstruct."),
    out: Path = typer.Option(..., "--out", "-o", help="Output store of reconstructions."),
    where: str = typer.Option(None, "--where", help="Catalog query, e.g. 'magnitude < 23'."),
    split: str = typer.Option(None, "--split", help="Only the model's train, val or test objects."),
    batch_size: int = typer.Option(256, "--batch-size"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Write decode(encode(x)) for every selected object as a new store (same ids and catalog)."""
    from deepfield.tasks import reconstruct_store

    model, s, idx = _selection(model_dir, store, where, split)
    reconstruct_store(model, s, out, indices=idx, batch_size=batch_size, overwrite=overwrite, progress=progress)
    console.print(f"[green]{idx.size} reconstructions written to[/] {out}")


@app.command()
def denoise(
    model_dir: Path = typer.Argument(..., help="Model folder of a VAE or a deconvolver."),
    store: Path = typer.Option(..., "--store", "-s", help="Store of observed images."),
    out: Path = typer.Option(..., "--out", "-o", help="Output store of denoised (and deconvolved) images."),
    where: str = typer.Option(None, "--where", help="Catalog query, e.g. 'magnitude < 23'."),
    split: str = typer.Option(None, "--split", help="Only the model's train, val or test objects."),
    batch_size: int = typer.Option(256, "--batch-size"),
    refine_steps: int = typer.Option(0, "--refine-steps",
                                     help="Refine each object's code from the encoder's in this many steps: fits "
                                          "the data closer, ~this many times slower (e.g. 30)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Noiseless images keyed by id: a VAE's posterior mean (PSF-free for pixel/fourier VAEs) or a
    deconvolver's PSF-free estimate."""
    from deepfield.tasks import denoise_store

    model, s, idx = _selection(model_dir, store, where, split)
    denoise_store(model, s, out, indices=idx, batch_size=batch_size, overwrite=overwrite,
                  refine_steps=refine_steps, progress=progress)
    console.print(f"[green]{idx.size} denoised images written to[/] {out}")


@app.command()
def sample(
    model_dir: Path = typer.Argument(..., help="Model folder of a generative model (vae, cvae, dcgan, wgan-gp, cgan, pixelcnn)."),
    n: int = typer.Option(..., "--n", help="Number of galaxies."),
    out: Path = typer.Option(..., "--out", "-o", help="Output store."),
    condition: str = typer.Option(None, "--condition", help="e.g. 'half_light_radius=0.8,magnitude=22,redshift=0.5'."),
    seed: int = typer.Option(0, "--seed"),
    prior: str = typer.Option("auto", "--prior", help="auto (the fitted latent prior, unless it scored held-out "
                              "codes worse than N(0, I)), fitted (it anyway) or gaussian (N(0, I))."),
    psf_fwhm: float = typer.Option(None, "--psf-fwhm", help="Also observe through a Moffat PSF of this FWHM (arcsec)."),
    noise_sigma: float = typer.Option(None, "--noise-sigma", help="Gaussian noise (counts/pixel) with --psf-fwhm."),
    bf16: bool = typer.Option(False, "--bf16", help="VAEs: decode in bfloat16 (about 2x faster on CPUs with "
                                                    "AVX512-BF16/AMX; pixels within ~1% of fp32)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Draw galaxies from a VAE (through its latent prior), a GAN or a PixelCNN into a store; optionally as
    observed."""
    import warnings

    import deepfield
    from deepfield.tasks import parse_condition, sample_store

    if prior not in ("auto", "fitted", "gaussian"):
        from deepfield.errors import InputError

        raise InputError(f"--prior {prior!r}: choose auto, fitted or gaussian")
    model = deepfield.load(model_dir)
    from deepfield.models.protocol import has

    if not has(model, "sample"):
        from deepfield.errors import InputError

        raise InputError(f"{model_dir} holds a {type(model).__name__}, which cannot sample: train a vae or cvae")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = sample_store(model, out, n, condition=parse_condition(condition), seed=seed, prior=prior,
                             psf_fwhm=psf_fwhm, noise_sigma=noise_sigma, overwrite=overwrite, progress=progress,
                             bf16=bf16)
    for w in caught:
        console.print(f"[yellow]warning:[/] {w.message}")
    console.print(f"[green]{len(store)} samples written to[/] {out} (prior: {store.meta['provenance']['prior']})")


evaluate_app = typer.Typer(help="Validate models.", no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")


@evaluate_app.command("morphology")
def evaluate_morphology_cmd(
    model_dir: Path = typer.Argument(..., help="Model folder of a VAE (with or without a latent prior)."),
    store: Path = typer.Option(..., "--store", "-s", help="The model's training store (its held-out split is used)."),
    n: int = typer.Option(None, "--n", help="At most this many held-out galaxies."),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(None, "--out", "-o", help="Write the full result as JSON here."),
):
    """Held-out galaxies vs model samples observed through the same PSFs and noise (HSM, Gini, M20, C, A)."""
    import json

    from deepfield.metrics import format_table
    from deepfield.tasks import evaluate_morphology

    model, s = _load(model_dir, store)
    result = evaluate_morphology(model, s, n=n, seed=seed)
    for name, entry in result["priors"].items():
        console.print(f"[bold]prior {name}[/] ({result['n']} held-out galaxies)")
        print(format_table(entry["rows"]))
        if entry["spearman"]:
            console.print("Spearman asked vs measured: " + ", ".join(f"{k} {v:.3f}" for k, v in entry["spearman"].items()))
    if out:
        out.write_text(json.dumps(result, indent=2, default=float) + "\n")


@evaluate_app.command("cosmicweb")
def evaluate_cosmicweb_cmd(
    model_dir: Path = typer.Argument(..., help="Model folder of a generative model of density slices "
                                               "(wgan-gp, dcgan)."),
    store: Path = typer.Option(..., "--store", "-s",
                               help="The slices store it was trained on (`deepfield simulate nbody --slices`)."),
    split: str = typer.Option("test", "--split", help="The model's held-out slices (test), val, train, or all."),
    n: int = typer.Option(None, "--n", help="At most this many held-out slices (and as many samples)."),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(None, "--out", "-o",
                             help="Folder for cosmicweb.json, cosmicweb.png and index.html (default MODEL/cosmicweb)."),
):
    """Model samples vs held-out N-body slices: density histogram, peak counts, 2-D P(k) and cross P(k)."""
    from rich.table import Table

    from deepfield.report.cosmicweb import write_cosmicweb_report
    from deepfield.tasks.cosmicweb import evaluate_cosmicweb

    model, s = _load(model_dir, store)
    result = evaluate_cosmicweb(model, s, split=None if split == "all" else split, n=n, seed=seed)
    table = Table(title=f"{model_dir.name}: {result['n_slices']} held-out slices vs as many samples "
                        f"(box {result['box_size']:g} Mpc/h, {result['slice_thickness']:g} Mpc/h thick)")
    # short labels, units in the caption, z green within 2 standard errors: the table fits 80 columns
    labels = {"density histogram": "PDF", "peak counts": "peaks", "P(k)": "P(k)",
              "cross P(k) sim-GAN": "cross s-G", "cross P(k) GAN-GAN": "cross G-G"}
    table.caption = ("bins: PDF of log10(1+δ), peak height δ, k in h/Mpc; P in (Mpc/h)^2; cross: N-body is "
                     "sim-sim; z = (GAN - N-body) / SE, green within 2")
    for column in ("statistic", "bin", "N-body", "GAN", "GAN/N-body", "z"):
        table.add_column(column, justify="left" if column == "statistic" else "right", no_wrap=True)
    for r in result["rows"]:
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.3f}"
        colour = "green" if r["within_2se"] else "red"
        table.add_row(labels.get(r["statistic"], r["statistic"]), f"{r['x']:.3g}", f"{r['sim']:.3g}±{r['sim_se']:.1g}",
                      f"{r['gan']:.3g}±{r['gan_se']:.1g}", ratio, f"[{colour}]{r['z']:+.1f}[/]")
    console.print(table)
    for name, entry in result["summary"].items():
        extra = ""
        if "max_abs_ratio_error_in_k_range" in entry:
            lo, hi = entry["k_range"]
            extra = (f"; {lo:g} < k < {hi:g} h/Mpc: max |GAN/N-body - 1| = "
                     f"{entry['max_abs_ratio_error_in_k_range']:.3f}, mean ratio {entry['mean_ratio_in_k_range']:.3f}")
        console.print(f"{name}: {entry['within_2se']}/{entry['bins']} bins within 2 SE{extra}", highlight=False)
    page = write_cosmicweb_report(result, out or model_dir / "cosmicweb", model_name=model_dir.name)
    console.print(f"[green]table, figure and page written to[/] {page.parent}")


@evaluate_app.command("c2st")
def evaluate_c2st_cmd(
    model_dir: Path = typer.Argument(..., help="Model folder of a generative model (vae, cvae) whose samples are "
                                               "noiseless, PSF-free skies."),
    store: Path = typer.Option(..., "--store", "-s", help="The model's training store (its held-out split is used)."),
    n: int = typer.Option(None, "--n", help="At most this many held-out galaxies."),
    prior: str = typer.Option("auto", "--prior", help="auto (the latent prior sample uses), fitted (the fitted one "
                                                      "anyway) or gaussian (N(0, I))."),
    snr_threshold: float = typer.Option(20.0, "--snr-threshold", help="Also test the galaxies and samples above "
                                                                      "this optimal S/N (the store's snr column)."),
    max_epochs: int = typer.Option(300, "--max-epochs", help="The classifier's most epochs."),
    patience: int = typer.Option(30, "--patience", help="Stop the classifier after this many epochs without a "
                                                        "better validation loss."),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(None, "--out", "-o", help="Write the full result as JSON here."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Classifier two-sample test: AUC of a CNN telling held-out galaxies from model samples observed through
    the same PSFs and noise (0.5: indistinguishable, 1: told apart), with its controls."""
    from rich.table import Table

    from deepfield._atomic import write_json_atomic
    from deepfield.tasks.c2st import POWER_AUC, classifier_two_sample_test

    model, s = _load(model_dir, store)
    result = classifier_two_sample_test(model, s, n=n, seed=seed, prior=prior, snr_threshold=snr_threshold,
                                        max_epochs=max_epochs, patience=patience, progress=progress)
    console.print(f"[bold]C2ST[/]: held-out galaxies vs {result['prior']} samples observed through the same PSFs "
                  "and noise; AUC of a CNN on its test part (0.5: indistinguishable, 1: told apart)")
    for name, entry in result["subsets"].items():
        samples = entry.get("n_samples", {}).get("model")
        title = f"{name}: {entry.get('n_held_out', '?')} held-out galaxies" + (
            f", {samples} model samples" if samples is not None else "")
        table = Table(title=title, show_edge=False)
        for column in ("comparison", "N test", "epochs (best)", "AUC", "68%", "95%"):
            table.add_column(column, justify="left" if column == "comparison" else "right")
        if "skipped" in entry:
            table.add_row("[yellow]skipped[/]", "", "", "", "", "")
            console.print(table)
            console.print(f"  {entry['skipped']}")
            continue
        for test, r in entry["tests"].items():
            if "skipped" in r:
                table.add_row(f"{test} [yellow](skipped: {r['skipped']})[/]", "", "", "", "", "")
                continue
            table.add_row(test, f"{r['n_first'][2]}+{r['n_second'][2]}", f"{r['epochs']} ({r['best_epoch']})",
                          f"{r['auc']:.3f}", "{:.3f}-{:.3f}".format(*r["interval_68"]),
                          "{:.3f}-{:.3f}".format(*r["interval_95"]))
        console.print(table)
    for name, entry in result["subsets"].items():
        controls = entry.get("controls", {})
        if controls and not controls["null at 0.5"]:
            console.print(f"[yellow]warning:[/] {name}: the held-out-vs-held-out control is not at 0.5 within its "
                          "95% interval: the classifier reads differences that are not there; rerun with another "
                          "--seed, or on more held-out galaxies")
        if controls and not controls["power"]:
            console.print(f"[yellow]warning:[/] {name}: the empty-sky control scores below {POWER_AUC}: the "
                          "classifier lacks the power to judge the model; raise --max-epochs or --patience, or use "
                          "more held-out galaxies")
    if out:
        write_json_atomic(out, result, indent=2, fsync=False)
        console.print(f"[green]C2ST written to[/] {out}")
