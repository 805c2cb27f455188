"""Write docs/benchmarks.md and the README's headline table from benchmarks/results/*.md, so that
no benchmark number is ever typed by hand.

    python benchmarks/readme_tables.py                              # print docs/benchmarks.md
    python benchmarks/readme_tables.py --write docs/benchmarks.md --readme README.md
    python benchmarks/readme_tables.py --check docs/benchmarks.md --readme README.md   # exit 1 if stale

The README's table sits between the two `<!-- benchmarks:headline -->` marker lines; everything
else in the README is left as it is. tests/test_docs.py runs the --check form.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
#: the one morphology run kept in results/: the README recipe's VAE with its flow on refined codes
RECIPE_MORPHOLOGY = "morphology_dilc_snr20_b0.1_e200_ref30_ml"
HEADLINE_BEGIN = "<!-- benchmarks:headline -->"
HEADLINE_END = "<!-- /benchmarks:headline -->"

INTRO = """\
# Benchmarks

Each script in `benchmarks/` writes `benchmarks/results/NAME.json` (every number, the machine and
its load) and `NAME.md` (the table below). This page is generated from those files by
`python benchmarks/readme_tables.py --write docs/benchmarks.md --readme README.md`; a test fails
when it is stale, so do not edit it by hand. The runs were made on a 2-core CPU development machine,
often shared with other work (load averages are in the JSON files); no GPU was used.

The VAE results below (every VAE row, the sampling recipe, the C2ST) were trained before the decoder's
sub-pixel layer started as nearest-neighbour upsampling (ICNR, which removed the 2x2 pattern
its random start printed on decoded skies); rerun now, their models start differently, so
their numbers will move.
"""

#: what the 29 explored morphology variants taught; their result files were removed from
#: benchmarks/results (git history keeps them) once this recipe was found
VARIANTS = """\
## What the morphology variants taught

29 variants of `benchmarks/morphology.py` (KL weights 1, 0.3 and 0.1; plain and
conditional VAEs; decoders that read the conditions or the code alone; flux and size applied as
physics; training and prior selections; flows on refined codes) were run on the same 5,190 held-out
galaxies before the recipe of the sampling guide was found; their result files are in git history (`git log -- benchmarks/results`). They showed that
what lets the decoder recognise a faint galaxy (its magnitude, size or redshift as a decoder input)
makes faint samples round, because the decoder learns a region of latent space that only noisy
faint galaxies train and decodes it to mean blobs; that a lighter KL term (beta 0.1) keeps more
shape but lets mean size drift (+3.9 sigma for the plain VAE); that applying flux as a scale and
size as a dilation of a flux-free profile drawn from the code alone (`flux_condition`,
`size_condition`, an empty `decoder_condition`) makes size exact (noiseless rho 0.99) but collapses the
posterior when trained on every galaxy with beta 1, and does not when trained on snr > 20 galaxies
with beta 0.1; that flux-scaled training needs a spike guard and a 1,000-step learning-rate warm-up;
that the encoder's own codes of small galaxies decode rounder than their truth whatever their
noise, so the flow must be fitted on codes refined galaxy by galaxy at maximum likelihood
(30 refinement steps, prior weight 0, which brought mean |e| from -7.5 to -0.6 sigma, while
refining the plain VAE's codes hurts: sizes +12 to +17 sigma); that fitting the flow on brighter or
fewer galaxies, or with a smaller flow, leaves the bright samples round, so the flow wants more
well-measured codes (hence the second store of the recipe, above); and that refitting the flow with another seed
moves |e| by up to 0.7 sigma and size by 0.6, the scale of any difference between these runs.
"""

#: (results file, title, command, note); the notes say what the numbers mean, not what they are
SECTIONS = [
    ("compression", "Compression: held-out MSE (PCA vs dense AE vs conv AE)",
     "python benchmarks/compression.py --only galaxies --latents 8 16 32 --galaxy-epochs 6  # then --only iris digits "
     "spectra",
     "MSE in units of the training set's per-band pixel variance, on the held-out split. On simulated stores the "
     "second table compares the reconstructions of the noisy input with the simulator's noiseless observation "
     "(truth through each galaxy's PSF): how much of the signal a code keeps; 'noisy input' is the data's own "
     "error. Against the noisy data themselves every model sits near the noise floor, so the first table cannot "
     "tell them apart on galaxies. With 4,000 64x64 training galaxies (fewer images than pixels) PCA's higher "
     "components are mostly noise: a basis fitted on the noiseless images would reach 0.00068 at d = 16, and "
     "PCA does no better at d = 32 than at 16. The conv AE's linear path, fitted on the images with their "
     "rotations and reflections, keeps more of the signal from d = 16 up; at d = 8 the symmetric basis spends "
     "components on orientations, so the conv AE keeps the plain one there (`linear_basis: auto` picks by a "
     "held-back fifth of the training images) and starts at 0.00422, under PCA's 0.00428, but 6 epochs of "
     "corrections take it to 0.00455: early stopping reads the noisy validation loss, which a reconstruction "
     "that lets noise through flatters. Its convolutional corrections hardly move the galaxy numbers in 6 "
     "epochs (with or without the encoder's correction, at learning rates 1e-3 and 3e-4: the gain left, at most "
     "0.002 in these units, is under 1% of a loss set by the noise); on digits they halve PCA's error. The "
     "VAE (`--families vae`: observation-model likelihood, beta 1, 6 epochs) keeps 12-16x less of the signal than "
     "PCA: every nat its codes carry costs a nat of KL, and its PSF-free decoder has not learned the bright "
     "galaxies' profiles in 6 epochs."),
    ("simulate", "Simulator throughput (64x64 stamps)", "python benchmarks/simulate.py --n 5000 --size 64 --repeat 2",
     "deepfield's rows also draw the truth and PSF stamps and write the store; the plain loops draw only the "
     "noisy image and write nothing."),
    ("train_throughput", "Conv AE training throughput (64x64, batch 64, 2.1M parameters)",
     "python benchmarks/train_throughput.py --steps 20", ""),
    ("vae_throughput", "VAE training: deepfield vs pythae 0.1.2 (same network, data, batch); flow-VAE sampling",
     "pip install pythae==0.1.2 && python benchmarks/vae_throughput.py",
     "Training loop wall time per epoch after the first (data loading + steps), 2,048 simulated 64x64 galaxies, "
     "2 threads; the four training rows take turns over three rounds, and each ratio is a round's. pythae runs "
     "the same layers in PyTorch's default NCHW layout and, its mixed precision being CUDA-only, in fp32. The "
     "arithmetic column says how close each loop runs to the rate at which this CPU multiplies large matrices, "
     "which bounds what any fp32 loop can gain; bf16 autocast is the way past it. The observation-model "
     "likelihood (PSF convolution by FFT, per-pixel inverse variance) costs a few per cent over the Gaussian one."),
    ("prior_more_codes", "Morphology of the recipe's samples (held-out galaxies vs samples observed the same way)",
     "python benchmarks/prior_more_codes.py  # the cached dilc_snr20_b0.1_e200 model; simulates a second store",
     "The same VAE and held-out galaxies; only the flow's training codes change: the VAE's own snr > 20 training "
     "galaxies, then those plus every snr > 20 galaxy of a second 12,000-galaxy store from the same simulator "
     "(seed 8), through `train_prior(..., extra_stores=...)`. The observed size rho is bounded "
     "by the data: the held-out galaxies' own HSM sizes, through the same PSFs and noise, correlate no better "
     "with their true radii."),
    (RECIPE_MORPHOLOGY, "The recipe's full morphology validation (flow on the VAE's own refined codes)",
     "python benchmarks/morphology.py --family cvae --flux-condition magnitude --size-condition half_light_radius "
     "--decoder-condition '' --train-where 'snr > 20' --prior-condition half_light_radius,redshift --beta 0.1 "
     "--epochs 200 --refine-steps 30 --refine-prior-weight 0 --name dilc_snr20_b0.1_e200_ref30_ml",
     "Measured with GalSim HSM and statmorph-style statistics (`deepfield.metrics`); histograms in "
     f"`benchmarks/results/{RECIPE_MORPHOLOGY}_histograms.png`. 'W1 half vs half' is what two random halves of "
     "the held-out set give each other: the floor a perfect model reaches. The last table says where roundness "
     "comes from: per magnitude bin, the truth, the VAE's decoded posterior draws and the flow's samples, and for "
     "faint galaxies' bright (snr > 40) twins of the same size, the encoder's code against a refined one."),
    ("refine_codes", "Refined codes against the encoder's: decoded size and |e| of training galaxies",
     "python benchmarks/refine_codes.py  # the cached dilc_snr20_b0.1_e200 model of benchmarks/morphology.py",
     "The encoder's means are rounder than the truth; the prior's pull (beta-MAP) leaves them larger; maximum "
     "likelihood comes closest in both, and on noiseless data reaches the truth's size, so what is left is "
     "the noise."),
    ("c2st", "Classifier two-sample test: a briefly trained VAE's samples vs held-out galaxies",
     "python benchmarks/c2st.py",
     "`deepfield evaluate c2st` on a VAE trained for 10 epochs on 2,400 32x32 galaxies: AUC 0.5 means a CNN "
     "cannot tell samples observed through the held-out galaxies' PSFs and noise from the galaxies, 1 that it "
     "always can. 'N test': galaxies + other images in the classifier's test part; 'epochs (best)': run and "
     "kept by early stopping. The empty-sky control (pure noise observed the same way) shows the classifier's "
     "power; the held-out-vs-held-out control its honesty, and the second table reruns it with other seeds: its "
     "spread is the Mann-Whitney sigma of a classifier that knows nothing, and 0.5 falls outside the 68% and 95% "
     "bootstrap intervals about as often as they say (nominally 32% and 5% of seeds). The S/N > 20 subset's "
     "control tests only a few dozen galaxies, so one seed in twenty misses 0.5 there by chance too, and the "
     "command warns when it does; its numbers want a few hundred bright held-out galaxies (a larger store or "
     "test fraction). The intervals count which galaxies were tested, not the classifier's training, so "
     "compare models with the same --seed."),
    ("denoise", "Denoising + deconvolution against the simulator's truth", "python benchmarks/denoise.py",
     "Richardson-Lucy's iteration count and Wiener's balance were tuned on validation galaxies first. The "
     "deconvolver (`deepfield train deconvolver`, 8 epochs on the VAE's training split: 17 min on one thread beside another run) "
     "learns the conditional mean of the truth from (observation, truth) pairs and keeps each stamp's flux, so "
     "its flux is unbiased for faint galaxies too; bright galaxies come out 8.5% small in half-light radius "
     "(median; its validation loss was still falling). Its first design added a correction to the observation: "
     "what it left of a faint stamp's noise summed to a +0.11 sigma pedestal that tripled half-light radii; "
     "drawing the estimate directly and weighing 4x4 and 16x16 block errors in the loss removed it. The VAE "
     "rows come from the run of 2026-11-22 on the same galaxies (its 25-epoch bf16 training takes hours on "
     "these AVX2-only cores). The VAE's flux runs high from a faint diffuse sky its non-negative decoder leaves "
     "across the stamp. Refining each code first (`deepfield denoise --refine-steps 30`) lowers the MSE a "
     "little and narrows bright galaxies' size errors, but fitting faint galaxies' noise pushes their flux and "
     "size higher."),
    ("gan", "GANs: speed, sample quality vs a VAE, CycleGAN ground-to-space translation", "python benchmarks/gan.py",
     "One torch thread on a shared machine (the load average is in the JSON). The CycleGAN, after 4 CPU epochs, "
     "is still the identity map and loses to Wiener deconvolution. Where pairs exist (here: simulations, whose "
     "truth is known), the paired translator does not: the deconvolver, trained for 12 epochs (6 min) on the "
     "ground survey's training galaxies and their truth and drawn through the space PSF, has 0.45x Wiener's MSE, "
     "half its size bias and half its HSM failures, at the same flux bias and a wider size scatter. Unpaired "
     "translation between real surveys still needs the CycleGAN trained far longer than a CPU allows here."),
    ("likelihood", "PixelCNN likelihoods: telling two simulated surveys apart", "python benchmarks/likelihood.py",
     "Only the depth difference is detected; at 16x16 the bits/dim are dominated by noise pixels."),
    ("anomaly", "Anomaly detection: AUROC per anomaly type and score",
     "python benchmarks/anomaly.py --pixelcnn --gan", "AUPR and precision@100 per type are in "
     "`benchmarks/results/anomaly.md`. 'calibrated': scores as robust z-scores among galaxies of similar magnitude. "
     "'local chi2' tests every 4x4 window of the residual for too much and too little, and takes PCA's AUPR over "
     "all anomalies from 0.72 (stamp-wide L2) to 0.84; missing_signal, a region of the galaxy whose light is "
     "gone, is ranked below chance by every stamp-wide L2. The rank-average ensembles' seven members were fixed "
     "before the run and weighted equally, so the weak ones (PixelCNN, likelihood ratio and GAN after 3 epochs) "
     "drag them down; the fitted ensembles' weights are chosen on a third survey with its own injections, never "
     "on the test survey's labels, and beat their best members. The latent density is scored as the KL of the "
     "whole posterior to the flow (or the flow's density at the posterior mean): a VAE that leaves normal "
     "galaxies' means near the origin makes the mean's density worse than chance (docs/anomalies.md). A deep "
     "score reaches PCA's calibrated L2 on all 9 types, but read why: on this 32x32 gri store the conv AE's "
     "linear path keeps the plain basis (`linear_basis: auto`), and after 10 epochs its scores equal PCA's to "
     "the second decimal; the wins on blended neighbours and tidal features come "
     "from the local chi2 score, which does as well on PCA's reconstruction (AUPR 0.965 and 0.759 against the "
     "conv AE's 0.968 and 0.767). Without `--pixelcnn --gan` the run takes 11.5 min."),
    ("search", "Similarity search: FAISS indexes on 1M codes; what codes carry", "python benchmarks/search.py",
     "Part 2 (`--only galaxies`) trains its models afresh and measures them on held-out galaxies of another "
     "sample seed and on their noise twin (`deepfield simulate galaxies --like --noise-seed`). A linear probe's "
     "R^2 is out of fold: 0 predicts no better than the mean, and heavy-tailed codes can send it below 0. Twin "
     "recall depends on how many galaxies are searched: it is the chance that no other galaxy's code lies "
     "nearer than the noise moves a galaxy's own."),
    ("pm", "Particle-mesh N-body: deepfield vs JaxPM from the same initial field",
     "pip install jaxpm packaging 'setuptools<81' && python benchmarks/pm.py --meshes 32 64 --rounds 3",
     "msre: mean squared relative error of the two final fields' P(k) (JaxPM's own gate against FastPM is 1e-3); "
     "r: their cross-correlation coefficient. JaxPM 0.1.6 has no fixed-step integrator, so its lpt, pm_forces "
     "and growth functions run inside the same FastPM kick-drift-kick loop, compiled by jax.jit."),
    ("cosmicweb", "Cosmic-web GAN emulator vs held-out particle-mesh slices",
     "python benchmarks/cosmicweb.py --minutes 8 --set channels=16,32,64 --set noise_injection=true",
     "Targets of issue 17: 2-D P(k) within 5% for 0.06 < k < 0.4 h/Mpc, peak counts and the density histogram "
     "within 2 standard errors in every bin (Rodriguez et al. 2018 reached 1-2% after days on GPUs). Here the "
     "GAN trains for 8 minutes on a shared 2-core CPU (some 600 generator steps) and misses them: the largest "
     "scales (k < 0.15 h/Mpc) agree within errors, the rest lack power. Without noise injection the deficit was "
     "deepest at k = 0.2 and 0.39 h/Mpc, the Nyquist frequencies of the generator's 8- and 16-pixel stages, "
     "where nearest-neighbour upsampling leaves the finer convolutions to create the power (P(k) ratio 0.34-0.64 "
     "above k = 0.2, max error 0.66, mean density 0.78 of the simulations'); per-stage noise inputs with learned "
     "weights (`noise_injection`) raise it to 0.52-0.82 there and 0.7-1.2 at k > 0.5 (max error 0.48, mean "
     "density 0.89, 4/14 peak bins within 2 SE instead of 2/14). The rest looks like training length: the game "
     "had not converged, and 2.5x the training (22 minutes, 97 epochs, same command with --minutes 22) moved the "
     "P(k) max error only from 0.48 to 0.43 and the histogram bins within 2 SE from 2 to 6 of 24: thousands more "
     "steps, a GPU's worth, are what is left to try. Same-budget variants that did worse: Rodriguez's s(x) stretch (P(k) max error 0.89) and "
     "the spectral critic (collapsed onto dense samples). Per-bin rows in the JSON, the Figure-2-like panels in "
     "the PNG beside them."),
    ("import_cosmos", "Importing a RealGalaxyCatalog (COSMOS layout) into a store",
     "python benchmarks/import_cosmos.py --n 10000 --repeat 2",
     "Measured on a quiet 2-core machine. The importer does much more than GalSim's loop (it cuts and writes every "
     "stamp, resamples each PSF, builds ivar, mask and the noise power spectrum) and still runs at 0.69x its "
     "rate on one worker and 0.86x on two, in a third of its memory: the GalSim reader keeps every image file it "
     "opened in memory, the importer streams memory-mapped files."),
    ("demo", "`deepfield demo`, stage by stage",
     "python benchmarks/demo.py",
     "Issue 14's target: the full demo under 5 minutes on a quiet 2-core machine, with no warning banner in its "
     "reports (a collapsed posterior, a prior worse than N(0, I), reconstructions that explain little, diverged "
     "training, samples outside the histograms). The baseline is the demo before its stages were resized, as issue 14 "
     "measured it: over 20 minutes on a loaded 2-core machine, with a collapsed quick VAE."),
    ("demo_quick", "`deepfield demo --quick` (what CI runs), stage by stage",
     "python benchmarks/demo.py --quick", ""),
    ("real_morphology", "A VAE of simulated galaxies, fine-tuned on real morphologies",
     "python benchmarks/real_morphology.py",
     "Reconstruction chi^2 per pixel against each object's own noise (1: a fit to the noise) on fresh draws of the "
     "five real AEGIS HST galaxies seen by the simulated survey (`simulate galaxies --morphology cosmos`) and on "
     "fresh parametric galaxies. Fine-tuning (`--set init=VAE_DIR`, 8 epochs) cuts the worst fits of real "
     "morphologies (p90 1.38 -> 1.13) at a small cost on parametric ones, and starts better than training on the "
     "real-morphology store alone. Five source galaxies measure nothing about fidelity to real galaxies: this shows "
     "the pipeline working end to end."),
]


def tables(name: str) -> list[list[dict[str, str]]]:
    """The markdown tables of results/NAME.md, each a list of rows keyed by column header."""
    found, block = [], []
    for line in [*(RESULTS / f"{name}.md").read_text().splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])])
        elif block:
            header, *rows = block
            found.append([dict(zip(header, r)) for r in rows if not set("".join(r)) <= set("-:")])
            block = []
    return found


def cell(name: str, first: str, column: str, table: int = 0) -> str:
    """The value in `column` of the row whose first cell is `first`, in the table-th table of NAME.md."""
    rows = tables(name)[table]
    key = next(iter(rows[0]))
    for r in rows:
        if r[key] == first:
            return r[column]
    raise KeyError(f"benchmarks/results/{name}.md table {table} has no row {first!r}")


def sigma(value: str) -> str:
    """'0.2476 (+19.3σ)' -> '+19.3σ'."""
    return re.search(r"\(([^)]*σ)\)", value).group(1)


#: the anomaly benchmark's ensemble whose weights are chosen on a validation survey (benchmarks/anomaly.py)
FITTED_ANOMALY_ENSEMBLE = "ensemble fitted on validation (calibrated scores)"


def headline() -> str:
    """The README's short table: each headline number beside its baseline."""
    sim = "simulate"
    vae = "vae_throughput"
    recipe = "own + extra store's codes"
    e_column = "mean \\|e\\| (σ)"
    e_n, size_n = (sigma(cell(RECIPE_MORPHOLOGY, s, "N(0, I) mean")) for s in ("e", "sigma_arcsec"))
    ano = "anomaly"
    rows = [
        ("Simulated 64x64 galaxies per second (2 workers, truth and PSF stamps written too)",
         cell(sim, "deepfield workers=2", "stamps/s"), cell(sim, "plain GalSim loop, PSF reused", "stamps/s") +
         " (plain GalSim loop, image only)"),
        ("VAE training, images/s (same network as pythae, CPU)",
         f"{cell(vae, 'deepfield fp32', 'images/s (median round)')} fp32, "
         f"{cell(vae, 'deepfield bf16', 'images/s (median round)')} bf16",
         f"{cell(vae, 'pythae fp32', 'images/s (median round)')} (pythae 0.1.2, fp32)"),
        ("Samples vs 5,190 held-out galaxies (the sampling guide's recipe): mean \\|e\\|, mean size (bootstrap σ)",
         f"{cell('prior_more_codes', recipe, e_column)}σ, {cell('prior_more_codes', recipe, 'mean size (σ)')}σ",
         f"{e_n}, {size_n} (same VAE, N(0, I) prior)"),
        ("Held-out MSE at 16-D codes (variance units): digits / simulated galaxies against their noiseless images",
         f"{_compression('digits', 'conv AE')} / {_compression('galaxies', 'conv AE', table=1)} (conv AE)",
         f"{_compression('digits', 'PCA')} / {_compression('galaxies', 'PCA', table=1)} (PCA)"),
        ("Denoised + deconvolved galaxies: MSE vs truth / noise variance",
         f"{_denoise('deepfield deconvolver')} (deconvolver), {_denoise('deepfield flow-VAE')} (flow-VAE)",
         f"{_denoise('Wiener')} (Wiener), {_denoise('Richardson-Lucy')} (Richardson-Lucy)"),
        ("Anomaly AUPR, 9 injected types at 2% of 5,000 galaxies",
         f"{cell(ano, FITTED_ANOMALY_ENSEMBLE, 'all', table=3)} (ensemble fitted on a validation survey), "
         f"{cell(ano, 'conv-AE reconstruction L2, calibrated', 'all', table=3)} (conv AE alone)",
         f"{cell(ano, 'PCA reconstruction L2, calibrated', 'all', table=3)} (PCA reconstruction, calibrated)"),
        ("Particle-mesh N-body at 64^3, 2LPT + 10 KDK steps: P(k) msre vs JaxPM, wall time",
         f"{cell('pm', '64^3', 'msre')}, {cell('pm', '64^3', 'deepfield s')} s",
         f"{cell('pm', '64^3', 'JaxPM s')} s (JaxPM, after a {cell('pm', '64^3', 'JaxPM first s (compile)')} s "
         "first run)"),
        ("Search on 1M codes: recall@10, queries/s",
         f"{cell('search', 'ivf', 'recall@10')}, {cell('search', 'ivf', 'queries/s')} (FAISS IVF)",
         f"{cell('search', 'flat', 'recall@10')}, {cell('search', 'flat', 'queries/s')} (exact)"),
    ]
    lines = ["| measure | deepfield | baseline |", "|---|---|---|"]
    lines += [f"| {m} | {d} | {b} |" for m, d, b in rows]
    return "\n".join(lines)


def _compression(data: str, column: str, d: str = "16", table: int = 0) -> str:
    return next(r[column] for r in tables("compression")[table] if r["data"] == data and r["d"] == d)


def _denoise(prefix: str) -> str:
    return next(r["MSE vs truth / noise variance"] for r in tables("denoise")[0]
                if r["method"].startswith(prefix) and r["galaxies"] == "all")


def benchmarks_page() -> str:
    """The whole of docs/benchmarks.md."""
    parts = [INTRO, "## Headline numbers\n\n" + headline() + "\n"]
    for name, title, command, note in SECTIONS:
        body = (RESULTS / f"{name}.md").read_text().strip()
        if name == "anomaly":  # the AUROC table and the verdict; AUPR and precision@100 stay in the file
            body = body.split("\nAUPR")[0].strip() + "\n\n" + body.splitlines()[-1]
        parts.append(f"## {title}\n\n`{command}`\n\n{body}\n" + (f"\n{note}\n" if note else ""))
        if name == RECIPE_MORPHOLOGY:
            parts.append(VARIANTS)
    return "\n".join(parts)


def readme_with_headline(readme: str) -> str:
    """The README text with the table between its headline markers regenerated."""
    if HEADLINE_BEGIN not in readme or HEADLINE_END not in readme:
        raise SystemExit(f"the README has no {HEADLINE_BEGIN} ... {HEADLINE_END} lines to fill")
    head, rest = readme.split(HEADLINE_BEGIN, 1)
    _, tail = rest.split(HEADLINE_END, 1)
    return f"{head}{HEADLINE_BEGIN}\n{headline()}\n{HEADLINE_END}{tail}"


def _write(path: Path, text: str) -> None:
    # a temporary name, then rename: an interrupted run never leaves half a page
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", type=Path, help="write the benchmarks page here (docs/benchmarks.md)")
    mode.add_argument("--check", type=Path, help="exit 1 if this page (and --readme) differ from a regeneration")
    ap.add_argument("--readme", type=Path, help="also fill (or check) this README's headline table")
    args = ap.parse_args(argv)
    outputs = {}
    target = args.write or args.check
    if target is None:
        print(benchmarks_page(), end="")
        return 0
    outputs[target] = benchmarks_page()
    if args.readme:
        outputs[args.readme] = readme_with_headline(args.readme.read_text())
    stale = [p for p, text in outputs.items() if not p.is_file() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"{p} is stale: run python benchmarks/readme_tables.py --write docs/benchmarks.md "
                  "--readme README.md", file=sys.stderr)
        return 1 if stale else 0
    for p in stale:
        _write(p, outputs[p])
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
