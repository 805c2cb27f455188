"""The main job, end to end: simulate a small survey, train PCA, autoencoders and a flow-VAE,
draw conditional samples, report.

``deepfield demo`` runs it with the embedded defaults; ``--quick`` is the CI-sized version.
Everything is written under one folder (default ./deepfield-demo)::

    survey/            the simulated store (GalSim bulge+disk galaxies, PSF, noise, truth)
    models/pca/        PCA baseline
    models/ae/         dense autoencoder
    models/conv-ae/    convolutional autoencoder
    models/vae/        VAE whose likelihood applies each galaxy's PSF and noise, with a latent
                       flow prior (prior/) conditional on half_light_radius, magnitude, redshift
    samples/           conditional samples (noiseless and observed) as a store
    report/index.html      the autoencoders' report: loss curves, reconstructions, latent space,
                           PCA vs AE (written as soon as the autoencoders are trained)
    report-vae/index.html  the flow-VAE: samples beside held-out galaxies, conditional sweeps,
                           morphology histograms (flow vs N(0, I) prior)
    demo.json          the plan, the seed and the stages finished so far (for ``resume``)

The demo runs in stages (:data:`STAGES`), each printed with the time elapsed and an estimate
of the time left, and each report is written as soon as its models are. Interrupted (Ctrl-C,
a kill), ``run_demo(..., resume=True)`` (``deepfield demo --resume``) keeps every finished
stage, continues an interrupted training run from its last checkpoint and an interrupted
simulation from its last batch.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deepfield._atomic import write_json_atomic
from deepfield.errors import InputError

__all__ = ["DemoPlan", "PLANS", "STAGES", "DemoInterrupted", "run_demo"]


@dataclass(frozen=True)
class DemoPlan:
    """The sizes of one demo: survey, networks, training.

    Arguments:
        n_galaxies: galaxies simulated.
        size: stamp side (pixels of 0.2 arcsec).
        depth: faint limit of the survey (AB magnitude, r band); brighter surveys hold larger,
            better-measured galaxies, which small models learn from in few epochs.
        latent_dim: code length of every model.
        epochs: epochs of the dense and convolutional autoencoders.
        channels: feature channels per resolution of the convolutional networks.
        hidden: hidden widths of the dense autoencoder.
        workers: processes drawing the galaxies.
        vae_epochs: epochs of the VAE.
        flow_epochs: epochs of its latent flow prior.
        morphology: held-out galaxies in the VAE report's morphology comparison.
        batch_size: objects per optimisation step.
        lr: Adam learning rate of the autoencoders and the VAE.
        threads: torch CPU threads while training (None: all cores).
        seconds: expected seconds of each stage on a quiet 2-core machine, by stage name (the
            progress lines' ETA; scaled by how fast the stages run so far).
    """

    n_galaxies: int
    size: int
    latent_dim: int
    epochs: int
    channels: tuple[int, ...]
    hidden: tuple[int, ...]
    workers: int
    vae_epochs: int
    flow_epochs: int
    morphology: int
    depth: float = 25.3
    batch_size: int = 64
    lr: float = 1e-3
    threads: int | None = None
    seconds: dict = field(default_factory=dict, compare=False)


PLANS = {
    # about 3 minutes on a quiet 2-core CPU (expected stage seconds below: measured at load ~3,
    # this demo's own 2 threads included, divided by 1.4). lr 1e-3: at 2e-3 the cosine schedule
    # over 12 epochs stays high long enough for the conv AE to diverge after its first epoch
    "full": DemoPlan(n_galaxies=1600, size=32, depth=24.5, latent_dim=16, epochs=12, channels=(16, 32, 64),
                     hidden=(256, 64), workers=2, vae_epochs=14, flow_epochs=30, morphology=160,
                     batch_size=32, lr=1e-3,
                     seconds={"survey": 6, "pca": 2, "ae": 4, "conv-ae": 50, "report": 5, "vae": 70,
                              "prior": 7, "report-vae": 8, "samples": 1}),
    # CI: about 25 s on a quiet 2-core CPU (58 s at load 4-5); bright, large galaxies and 6 epochs of
    # small networks, so that its reports show galaxies (2 epochs of the full networks collapsed)
    "quick": DemoPlan(n_galaxies=400, size=32, depth=23.5, latent_dim=8, epochs=6, channels=(8, 16, 32),
                      hidden=(128,), workers=1, vae_epochs=6, flow_epochs=10, morphology=40,
                      batch_size=32, lr=2e-3,
                      seconds={"survey": 3, "pca": 1, "ae": 1, "conv-ae": 3, "report": 5, "vae": 4,
                               "prior": 1, "report-vae": 6, "samples": 1}),
}

#: the demo's stages in order: (name, what it does, its output under the demo folder)
STAGES = (
    ("survey", "simulating the survey with GalSim", "survey"),
    ("pca", "fitting PCA", "models/pca"),
    ("ae", "training the dense autoencoder", "models/ae"),
    ("conv-ae", "training the convolutional autoencoder", "models/conv-ae"),
    ("report", "writing the autoencoders' report", "report/index.html"),
    ("vae", "training the VAE (PSF + per-pixel noise likelihood)", "models/vae"),
    ("prior", "fitting the VAE's latent flow prior", "models/vae/prior"),
    ("report-vae", "writing the flow-VAE's report", "report-vae/index.html"),
    ("samples", "drawing conditional samples", "samples"),
)
_STATE = "demo.json"
_CONDITION = ("half_light_radius", "magnitude", "redshift")
_ASK = {"half_light_radius": 0.6, "magnitude": 22.0, "redshift": 0.5}


class DemoInterrupted(Exception):
    """The demo was stopped (Ctrl-C or a stage's own interruption); finished stages are kept."""

    def __init__(self, stage: str, number: int, command: str):
        self.stage, self.number, self.command = stage, number, command
        super().__init__(f"demo interrupted in stage {number}/{len(STAGES)} ({stage}); the finished stages are "
                         f"kept. Continue with: {command}")


def _resume_command(out: Path, quick: bool, seed: int) -> str:
    return ("deepfield demo --resume" + (" --quick" if quick else "") + (f" --seed {seed}" if seed else "")
            + f" --out {out}")


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


class _StageClock:
    """Elapsed time and the estimate of the time left, from the plan's expected stage seconds
    scaled by how fast the stages run so far (slower on a busy machine)."""

    def __init__(self, expected: dict[str, float], done: set[str]):
        self.expected = {name: float(expected.get(name, 1.0)) for name, _, _ in STAGES}
        self.t0 = time.perf_counter()
        self.remaining = [name for name, _, _ in STAGES if name not in done]
        self.ran_expected = 0.0  # expected seconds of the stages run (not skipped) in this process
        self.ran_seconds = 0.0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def finished(self, name: str, seconds: float) -> None:
        self.remaining.remove(name)
        self.ran_expected += self.expected[name]
        self.ran_seconds += seconds

    def eta(self) -> float:
        """Seconds left: the remaining stages' expected seconds times the machine's speed
        relative to the plan's quiet one, as the stages run so far have shown it."""
        speed = self.ran_seconds / self.ran_expected if self.ran_expected > 0 else 1.0
        return sum(self.expected[n] for n in self.remaining) * speed

    def fraction(self) -> float:
        total = sum(self.expected.values())
        return 1.0 - sum(self.expected[n] for n in self.remaining) / total


def _bar(fraction: float, width: int = 20) -> str:
    filled = int(round(fraction * width))
    return "━" * filled + "╺" + "─" * (width - filled - 1) if filled < width else "━" * width


def run_demo(out="deepfield-demo", quick: bool = False, seed: int = 0, progress: bool = True, log=print, *,
             resume: bool = False, plan: DemoPlan | None = None, on_stage: Callable[[str, str], None] | None = None,
             callbacks: list | None = None) -> Path:
    """Run the demo into folder `out`; returns the path of the autoencoders' report.

    Arguments:
        out: the demo folder; without `resume` an earlier demo there is replaced.
        quick: the CI-sized plan (:data:`PLANS` 'quick') instead of 'full'.
        plan: sizes of your own instead (a :class:`DemoPlan`; `quick` then only names it).
        seed: seed of the survey, the initialisations, the splits and the samples.
        progress: show the stages' own progress bars (galaxies, epochs).
        log: called with each line to print (stage lines with elapsed time and ETA, report paths).
        resume: continue an interrupted demo in `out` (same plan and seed): finished stages
            are skipped, an interrupted training run continues from its checkpoint, an
            interrupted simulation from its last batch.
        on_stage: called with (stage name, 'start' or 'done') around each stage that runs.
        callbacks: Lightning callbacks added to every gradient-trained model's trainer.

    Raises:
        DemoInterrupted: on Ctrl-C (KeyboardInterrupt) or an interrupted training run; the
            message names the command that continues the demo.
        InputError: `resume` in a folder with no demo, or with a demo of another plan or seed.
    """
    plan = plan or PLANS["quick" if quick else "full"]
    out = Path(out)
    state_path = out / _STATE
    plan_record = {k: v for k, v in dataclasses.asdict(plan).items() if k != "seconds"}
    plan_record = json.loads(json.dumps(plan_record))  # tuples as lists, as read back
    done: list[str] = []
    if resume:
        if not state_path.is_file():
            raise InputError(f"nothing to resume in {out}: no {_STATE} of an earlier demo there. Run without --resume "
                             "to start one")
        try:
            state = json.loads(state_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{state_path} is corrupt ({err}): run without --resume to start afresh") from None
        if state.get("plan") != plan_record or state.get("seed") != seed:
            was = "--quick" if state.get("quick") else "the full plan"
            raise InputError(f"the demo in {out} was started with other options ({was}, seed {state.get('seed')}, "
                             f"its plan in {state_path}): resume with the same ones, or run without --resume to "
                             "start afresh")
        # the finished stages up to the first one not finished or whose output has gone: every
        # later stage read that one's output, so it is redone too
        for name, _, output in STAGES:
            if name not in state.get("done", []) or not (out / output).exists():
                break
            done.append(name)
    out.mkdir(parents=True, exist_ok=True)
    state = {"quick": bool(quick), "seed": seed, "plan": plan_record, "done": done}
    write_json_atomic(state_path, state, indent=2)

    import deepfield.train  # noqa: F401  (torch and Lightning: seconds of imports, not of the first stage)

    clock = _StageClock(plan.seconds, set(done))
    ctx = _Context(plan, out, seed, progress, resume, callbacks or [], log)
    command = _resume_command(out, quick, seed)
    log(f"deepfield demo ({'quick' if quick else 'full'} plan) in {out}: {len(STAGES)} stages, about "
        f"{_clock(clock.eta())} on a quiet 2-core machine" + (f"; resuming, {len(done)} finished" if done else ""))
    for number, (name, words, output) in enumerate(STAGES, 1):
        if name in done:
            log(f"stage {number}/{len(STAGES)}: {name} already done ({output}), skipped")
            continue
        log(f"stage {number}/{len(STAGES)}: {name}, {words} {_bar(clock.fraction())} elapsed "
            f"{_clock(clock.elapsed)}, ETA {_clock(clock.eta())}")
        t = time.perf_counter()
        try:
            if on_stage is not None:
                on_stage(name, "start")
            _RUN[name](ctx)
            if on_stage is not None:
                on_stage(name, "done")
        except KeyboardInterrupt:
            raise DemoInterrupted(name, number, command) from None
        except Exception as err:
            from deepfield.train import TrainingInterrupted

            if isinstance(err, TrainingInterrupted):
                raise DemoInterrupted(name, number, command) from None
            raise
        seconds = time.perf_counter() - t
        done.append(name)
        write_json_atomic(state_path, {**state, "done": done}, indent=2)
        clock.finished(name, seconds)
        log(f"stage {number}/{len(STAGES)}: {name} done in {seconds:.0f} s {_bar(clock.fraction())} elapsed "
            f"{_clock(clock.elapsed)}, ETA {_clock(clock.eta())}")
        if name in ("report", "report-vae"):
            log(f"{'autoencoders' if name == 'report' else 'flow-VAE'} report: {(out / output).resolve()}")
    log(f"done in {clock.elapsed:.0f} s")
    return out / "report" / "index.html"


@dataclass
class _Context:
    plan: DemoPlan
    out: Path
    seed: int
    progress: bool
    resume: bool
    callbacks: list
    log: Callable

    @property
    def store(self):
        from deepfield.data.store import open_store

        return open_store(self.out / "survey")

    def settings(self, epochs: int, patience: int):
        from deepfield.train import TrainSettings

        p = self.plan
        return TrainSettings(epochs=epochs, batch_size=p.batch_size, lr=p.lr, seed=self.seed, patience=patience,
                             threads=p.threads, progress=self.progress)

    def train(self, family: str, options: dict, epochs: int, patience: int) -> Path:
        from deepfield.train import train, training_dir

        out = self.out / "models" / family
        # an interrupted run of this stage left its checkpoint: continue it
        resume = self.resume and (training_dir(out) / "checkpoints" / "last.ckpt").is_file()
        if resume:
            self.log(f"  resuming {family} from its checkpoint")
        return train(family, self.store, out, model_options=options, settings=self.settings(epochs, patience),
                     resume=resume, overwrite=True, callbacks=list(self.callbacks))


def _survey(ctx: _Context) -> None:
    from deepfield.data.galaxies import simulate_galaxies

    p = ctx.plan
    ctx.log(f"  {p.n_galaxies} galaxies to r = {p.depth:g}, {p.size}x{p.size} pixels of 0.2\", r band")
    simulate_galaxies(ctx.out / "survey", p.n_galaxies, size=p.size, bands=("r",), depth=p.depth, seed=ctx.seed,
                      workers=p.workers, overwrite=True, resume=ctx.resume, progress=ctx.progress)


def _pca(ctx: _Context) -> None:
    # randomized SVD: the leading components as the exact one, in a tenth of the time (the exact
    # SVD of 1,280 x 1,024 pixels took 32 s on a busy 2-core machine)
    ctx.train("pca", {"latent_dim": ctx.plan.latent_dim, "method": "randomized"}, 1, 0)


def _ae(ctx: _Context) -> None:
    p = ctx.plan
    ctx.train("ae", {"latent_dim": p.latent_dim, "hidden": p.hidden}, p.epochs, 0)


def _conv_ae(ctx: _Context) -> None:
    p = ctx.plan
    ctx.train("conv-ae", {"latent_dim": p.latent_dim, "channels": p.channels}, p.epochs, 0)


def _report(ctx: _Context) -> None:
    from deepfield.report import make_report

    models = ctx.out / "models"
    make_report(models / "conv-ae", ctx.store, ctx.out / "report", compare=[models / "pca", models / "ae"],
                color_by="magnitude", samples=None)


def _vae(ctx: _Context) -> None:
    p = ctx.plan
    ctx.train("vae", {"likelihood": "pixel", "latent_dim": p.latent_dim, "channels": p.channels}, p.vae_epochs, 0)


def _prior(ctx: _Context) -> None:
    from deepfield.train.prior import train_prior

    ctx.log(f"  conditional on {', '.join(_CONDITION)}")
    train_prior(ctx.out / "models" / "vae", ctx.store, kind="nsf", condition=_CONDITION, epochs=ctx.plan.flow_epochs,
                seed=ctx.seed, progress=ctx.progress)


def _report_vae(ctx: _Context) -> None:
    from deepfield.report import make_report

    make_report(ctx.out / "models" / "vae", ctx.store, ctx.out / "report-vae", color_by="magnitude",
                samples=ctx.plan.morphology)


def _samples(ctx: _Context) -> None:
    import deepfield
    from deepfield.tasks.sample import sample_store

    store = ctx.store
    ctx.log("  64 samples with " + ", ".join(f"{k} = {v:g}" for k, v in _ASK.items()) +
            ", noiseless and observed through a 0.7\" Moffat PSF with noise")
    sample_store(deepfield.load(ctx.out / "models" / "vae"), ctx.out / "samples", 64, condition=_ASK, seed=ctx.seed,
                 psf_fwhm=0.7, noise_sigma=float(store.column("noise_sigma").mean()), overwrite=True,
                 progress=ctx.progress)


_RUN = {"survey": _survey, "pca": _pca, "ae": _ae, "conv-ae": _conv_ae, "report": _report, "vae": _vae,
        "prior": _prior, "report-vae": _report_vae, "samples": _samples}
