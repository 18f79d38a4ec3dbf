"""``rsna plan``: what a config costs before it runs: the disk of every file, the GPU-hours.

A plan is arithmetic over stated figures, never a measurement of this run:

* **Images.** The stage-2 competition (752,803 train and 121,232 test slices), or
  ``slices`` in the same proportion, split into ``n_folds`` patient folds.
* **Disk.** The store from :data:`REAL_SLICE_KB`, bytes a slice measured on a real head-CT
  slice (``scripts/bench_store_size.py``), or from the store itself when it is built;
  checkpoints from the backbone's parameters (:mod:`rsna.backbones`); embeddings, OOF
  and submission files from their row sizes (:data:`BYTES`).
* **Time.** Training images a second from :data:`GPUS` (EfficientNet-B0 at 224, with its
  source: published, or scaled from one by memory bandwidth and labelled an estimate),
  scaled by the backbone's published GFLOPs at the config's size and by the number of
  devices (linearly: an upper bound). A forward pass (validation, TTA, embedding) is
  taken as a third of a training step. Preprocessing and the series model run on the
  CPU (:data:`PREPROCESS`, :data:`STAGE2_SECONDS`): in a Kaggle CPU notebook they use no
  GPU quota, so their hours are counted apart.

Keras-free; it reads only the config and, when they exist, the work folder's files.
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from rsna.backbones import BACKBONES, Backbone
from rsna.config import Config
from rsna.data.cache import SPEC_FILE, StoreMissing, complete_store, read_store_json
from rsna.data.views import expand_views
from rsna.errors import RsnaError

__all__ = [
    "BYTES",
    "FULL_TEST",
    "FULL_TRAIN",
    "GPUS",
    "REAL_SLICE_KB",
    "STAGE2_SECONDS",
    "Gpu",
    "Hardware",
    "Item",
    "Plan",
    "LOADER",
    "LOADER_CORES",
    "PREPROCESS",
    "PlanError",
    "format_plan",
    "free_disk_gb",
    "hardware",
    "loader_rate",
    "plan_run",
    "store_kb",
]

#: The stage-2 competition's images (FACTS: 752,803 unique train images, 121,232 test).
FULL_TRAIN, FULL_TEST = 752_803, 121_232
#: Slices of a typical series, to count what ``train.sampling = "study"`` draws an epoch:
#: assumed (the middle of the 28-40 of a typical head-CT series), not counted from the data.
SERIES_SLICES = 34

#: Bytes a slice (kB) of a store of 3 windows, measured on pydicom-data's real head-CT
#: slice 693_UNCR.dcm by ``python scripts/bench_store_size.py``: (size, crop, codec tag).
#: The synthetic phantoms give 0.87-1.65x less; one mid-head slice leans high.
REAL_SLICE_KB: dict[tuple[int, str, str], float] = {
    (256, "none", "lossless"): 36.6, (256, "none", "lossy80"): 8.3,
    (256, "none", "lossy90"): 11.6, (256, "none", "lossy95"): 16.0,
    (256, "head", "lossless"): 61.6, (256, "head", "lossy80"): 10.5,
    (256, "head", "lossy90"): 15.0, (256, "head", "lossy95"): 21.1,
    (384, "none", "lossless"): 77.2, (384, "none", "lossy80"): 14.6,
    (384, "none", "lossy90"): 20.3, (384, "none", "lossy95"): 28.1,
    (384, "head", "lossless"): 125.8, (384, "head", "lossy80"): 18.3,
    (384, "head", "lossy90"): 26.3, (384, "head", "lossy95"): 36.7,
    (512, "none", "lossless"): 73.0, (512, "none", "lossy80"): 23.2,
    (512, "none", "lossy90"): 32.4, (512, "none", "lossy95"): 44.6,
    (512, "head", "lossless"): 204.8, (512, "head", "lossy80"): 26.8,
    (512, "head", "lossy90"): 38.6, (512, "head", "lossy95"): 54.2,
}  # fmt: skip

#: Bytes of one row of each text and array file, measured on the demo's run files
#: (``rsna demo``: 1,552 slices).
BYTES = {
    "metadata": 100,  # metadata.parquet, labels.parquet and folds.csv, a slice (92 measured)
    "oof_row": 140,  # oof.csv, predictions_test.csv: an image ID and six probabilities
    "submission_row": 36,  # submission.csv: ID_<hex>_<label>,<probability>
    "embedding_id": 48,  # embed_*.npz: the image ID as numpy '<U12'
}

#: Preprocessing's rates: reading the DICOMs (about 525 kB a slice, FACTS) at an assumed
#: 100 MB/s from Kaggle's network storage, and encoding 512x512 DICOMs to a lossy
#: 256x256x3 store at 1,515 slices/s on 2 cores (scripts/bench_scale.py, README).
PREPROCESS = {"dicom_kb": 525.0, "read_mb_per_s": 100.0, "slices_per_s": 1515.0}

#: The DataGenerator's images a second, a core, at 256x256 (batches of 64, one worker
#: thread a core, all cores busy), by store compression and context slices a side:
#: ``python scripts/bench_feed.py`` on 2 cores of this machine (medians of 3 interleaved
#: rounds, issue 28). A raw store reads at least as fast as a lossless one.
LOADER = {
    "size": 256,
    # 4,314 / 1,578 img/s lossless and 3,411 / 985 lossy at context 0 / 1, on 2 cores
    "per_core": {("lossless", 0): 2157.0, ("lossless", 1): 789.0, ("lossy", 0): 1706.0, ("lossy", 1): 493.0},
    "source": "scripts/bench_feed.py, 2 cores",
}

#: Cores a loader may have, for the feeding table of ``rsna plan``.
LOADER_CORES = (4, 16, 64)


def loader_rate(*, compression: str, context: int, size: int, cores: int) -> float:
    """Images a second the DataGenerator gives on `cores` cores (:data:`LOADER`): linear
    in cores from the all-cores-busy rate (an upper bound), inverse in area, and past
    context 1 inverse in the slices decoded a sample (``2 * context + 1``)."""
    kind = "lossy" if compression == "lossy" else "lossless"
    base = LOADER["per_core"][(kind, min(context, 1))]
    if context > 1:
        base *= 3 / (2 * context + 1)
    return base * cores * (LOADER["size"] / size) ** 2


#: Stage 2's seconds per training slice, epoch and bag of the series model on 2 CPU
#: cores: ``python scripts/bench_stage2.py baseline`` (a GRU of 96 units, batches of 96
#: series of 36 slices). A validation slice costs a third of that. A GPU is faster.
STAGE2_SECONDS = 2.9e-5


class PlanError(RsnaError):
    """A plan that cannot be made: an unknown GPU, or a backbone with no published cost."""


@dataclass(frozen=True)
class Gpu:
    """One accelerator's training rate for EfficientNet-B0 at 224x224, with its source."""

    name: str
    b0_images_per_second: float
    source: str


_NVIDIA = "NVIDIA DeepLearningExamples, TF2 EfficientNet-B0, AMP"
#: Training images a second of EfficientNet-B0 at 224 on one device.
GPUS = {
    "v100": Gpu("V100", 868.0, _NVIDIA),
    "a100": Gpu("A100", 3454.0, _NVIDIA),
    "t4": Gpu("T4", 868.0 * 320 / 900, "estimate: the V100's rate x memory bandwidth 320/900 GB/s"),
    "p100": Gpu("P100", 868.0 * 732 / 900 / 2, "estimate: the V100's rate x bandwidth 732/900 GB/s, / 2 for float32 (no tensor cores)"),
}  # fmt: skip


@dataclass(frozen=True)
class Hardware:
    """Devices and the limits of where they run (None: no limit given)."""

    gpu: Gpu
    count: int
    disk_gb: float | None = None
    session_hours: float | None = None
    weekly_hours: float | None = None

    @property
    def name(self) -> str:
        return f"{self.count}x {self.gpu.name}" if self.count > 1 else self.gpu.name


#: Kaggle's GPU notebooks (FACTS): about 20 GB of /kaggle/working, 12-hour sessions,
#: about 30 GPU-hours a week, counted by session time.
_KAGGLE = {"t4x2": 2, "p100": 1}
_KAGGLE_LIMITS = {"disk_gb": 20.0, "session_hours": 12.0, "weekly_hours": 30.0}


def hardware(text: str) -> Hardware:
    """``t4x2``, ``p100`` (Kaggle's notebooks, with their limits), or ``<gpu>[x<n>]`` for
    a machine of yours (``v100x4``, ``a100x8``).

    Raises:
        PlanError: an unknown GPU or count.
    """
    match = re.fullmatch(r"([a-z0-9]+?)(?:x(\d+))?", text.lower())
    if match is None or match.group(1) not in GPUS or match.group(2) in ("0",):
        raise PlanError(
            f"`gpus` must be one of {sorted(GPUS)}, optionally with a count such as t4x2 or "
            f"v100x4. Received: gpus={text!r}"
        )
    count = int(match.group(2) or 1)
    limits = _KAGGLE_LIMITS if _KAGGLE.get(text.lower()) == count else {}
    return Hardware(GPUS[match.group(1)], count, **limits)


@dataclass(frozen=True)
class Item:
    """One line of a plan: a file kind's disk, or a stage's device hours."""

    stage: str
    what: str
    gb: float = 0.0
    hours: float = 0.0
    transient: bool = False  # disk held only while a fold trains (the fit's backup)
    cpu: bool = False  # hours on the CPU (no GPU needed)


@dataclass(frozen=True)
class Plan:
    config: str
    hardware: Hardware
    train_images: int
    test_images: int
    folds: int
    items: tuple[Item, ...] = field(default_factory=tuple)
    rate: float = 0.0  # training images a second on all devices
    rate_source: str = ""
    size: int = 256  # image.size, for the loader's rate
    context: int = 1  # image.context, for the loader's rate
    compression: str = "lossy"  # data.compression, for the loader's rate
    workers: int = 1  # train.workers: the loader's threads

    @property
    def disk_gb(self) -> float:
        """Everything written that stays, plus the largest transient file."""
        kept = sum(i.gb for i in self.items if not i.transient)
        return kept + max((i.gb for i in self.items if i.transient), default=0.0)

    @property
    def hours(self) -> float:
        """Hours on the accelerators."""
        return sum(i.hours for i in self.items if not i.cpu)

    @property
    def cpu_hours(self) -> float:
        return sum(i.hours for i in self.items if i.cpu)


def store_kb(config: Config) -> tuple[float, str]:
    """Bytes a slice (kB) of the store `config` reads, and where the figure comes from:
    the built store itself, else :data:`REAL_SLICE_KB` (scaled by area and channels)."""
    spec, codec = config.image.spec, config.codec
    try:
        built = complete_store(config.data.work_dir, spec, codec)
    except StoreMissing:
        built = None
    images = read_store_json(built / SPEC_FILE).get("images") if built else None
    if images:
        size = sum(p.stat().st_size for p in built.glob("shard-*.tfrecord"))
        return size / images / 1000, f"measured: {built}"
    if codec.name == "raw":
        return spec.size**2 * spec.channels / 1000, "exact: raw bytes"
    crop = "head" if spec.crop == "head" else "none"
    tags = {tag for (_, c, tag) in REAL_SLICE_KB if c == crop}
    tag = codec.tag if codec.tag in tags else _nearest_tag(codec.tag, tags)
    sizes = sorted({s for (s, c, t) in REAL_SLICE_KB if c == crop and t == tag})
    near = min(sizes, key=lambda s: abs(s - spec.size))
    kb = REAL_SLICE_KB[(near, crop, tag)] * (spec.size / near) ** 2 * spec.channels / 3
    how = f"real head-CT slice, {tag} at {near}" + ("" if tag == codec.tag else f" (nearest to {codec.tag})")
    how += "" if near == spec.size else f", scaled by area to {spec.size}"
    return kb, how


def _nearest_tag(tag: str, tags: set[str]) -> str:
    quality = int(re.sub(r"\D", "", tag) or 95)
    lossy = sorted(t for t in tags if t.startswith("lossy"))
    return min(lossy, key=lambda t: abs(int(t[5:]) - quality))


def _rate(config: Config, machine: Hardware, rate: float | None) -> tuple[float, str]:
    """Training images a second on all devices, and how it was found."""
    if rate is not None:
        return rate * machine.count, f"given: {rate:g} img/s a device"
    backbone: Backbone = BACKBONES[config.model.backbone]
    if backbone.cost is None:
        raise PlanError(
            f"{backbone.name} has no published compute in rsna.backbones; measure its "
            "training rate on one device and pass it as --rate IMAGES_PER_SECOND"
        )
    anchor = BACKBONES["EfficientNetB0"].cost.at(224)
    one = machine.gpu.b0_images_per_second * anchor / backbone.cost.at(config.image.size)
    source = (
        f"{machine.gpu.b0_images_per_second:.0f} img/s for B0 at 224 ({machine.gpu.source}) "
        f"x {anchor:.2f}/{backbone.cost.at(config.image.size):.2f} GFLOPs "
        f"({backbone.name} at {config.image.size}: {backbone.cost.source})"
    )
    if machine.count > 1:
        source += f", x {machine.count} devices (linear: an upper bound)"
    return one * machine.count, source


def plan_run(
    config: Config,
    *,
    machine: Hardware,
    slices: int | None = None,
    n_folds: int = 5,
    folds: int | None = None,
    rate: float | None = None,
    stage2: bool = True,
) -> Plan:
    """The disk and device hours of `config` on `machine`: every file kind, every stage.

    Args:
        slices: all images, train and test (default: the competition's 874,035).
        n_folds: the folds the images are split into; `folds` of them are trained
            (default: all).
        rate: a measured training rate on one device (images a second), instead of the
            published figures.
        stage2: include embedding and the series model.
    """
    total = slices if slices is not None else FULL_TRAIN + FULL_TEST
    train = round(total * FULL_TRAIN / (FULL_TRAIN + FULL_TEST))
    test = total - train
    trained = folds if folds is not None else n_folds
    valid = train / n_folds
    fit = train - valid
    speed, source = _rate(config, machine, rate)
    forward = 3 * speed
    views = len(expand_views(config.predict.tta))
    bag = max(1, config.train.snapshots)  # every prediction runs once per snapshot
    backbone = BACKBONES[config.model.backbone]
    kb, store_how = store_kb(config)
    gb = 1e-9
    epochs = config.train.epochs
    if config.train.sampling == "study":  # an epoch draws per_study slices a series
        fit = min(fit, config.train.per_study * fit / SERIES_SLICES)
    weights_gb = backbone.params * 4 * gb
    items = [
        Item("prepare", "metadata, labels, folds, report", BYTES["metadata"] * total * gb),
        Item("preprocess", f"store ({config.codec.tag}, {kb:.1f} kB a slice: {store_how})", kb * 1000 * total * gb),
        Item("preprocess", f"read {total * PREPROCESS['dicom_kb'] / 1e6:,.0f} GB of DICOMs at {PREPROCESS['read_mb_per_s']:.0f} MB/s (assumed), encode at {PREPROCESS['slices_per_s']:,.0f}/s", 0, total * max(PREPROCESS["dicom_kb"] / 1000 / PREPROCESS["read_mb_per_s"], 1 / PREPROCESS["slices_per_s"]) / 3600, cpu=True),
        Item("stage 1", f"train {trained} folds x {epochs} epochs x {fit:,.0f} images", 0, trained * epochs * fit / speed / 3600),
        Item("stage 1", f"validate each epoch ({valid:,.0f} images)", 0, trained * epochs * valid / forward / 3600),
        Item("stage 1", f"OOF with {views} TTA views x {bag} weights", trained * valid * BYTES["oof_row"] * 2 * gb, trained * valid * views * bag / forward / 3600),
        Item("stage 1", f"best.keras per fold ({backbone.params / 1e6:.1f}M parameters, float32)", trained * weights_gb),
        *([Item("stage 1", f"snapshots/: the last {config.train.snapshots} epochs' weights per fold", trained * config.train.snapshots * weights_gb)] if config.train.snapshots else []),
        Item("stage 1", "backup/: 2 checkpoints of weights and AdamW's 2 moments", 2 * 3 * weights_gb, transient=True),
        Item("stage 1", f"test: {test:,} images x {views} views x {bag} weights x {trained} folds", (test * 6 * BYTES["submission_row"] + test * BYTES["oof_row"]) * gb, trained * test * views * bag / forward / 3600),
    ]  # fmt: skip
    if stage2:
        width = 12 + (2 * backbone.features if "features" in config.sequence.inputs else 0)
        per_image = width + BYTES["embedding_id"] + 1
        what = "logits" if width == 12 else f"logits and {backbone.features} features"
        seq_epochs = config.sequence.epochs * config.sequence.bags
        items += [
            Item("stage 2", f"embed ({what}, float16): OOF and test x {views} views x {bag} weights", trained * (valid + test) * per_image * gb, trained * (valid + test) * views * bag / forward / 3600),
            Item("stage 2", f"series model: {trained} folds x {seq_epochs} epochs (2-core CPU rate)", trained * valid * BYTES["oof_row"] * 2 * gb, trained * (fit + valid / 3) * seq_epochs * STAGE2_SECONDS / 3600, cpu=True),
            Item("stage 2", "test: submission and predictions", (test * 6 * BYTES["submission_row"] + test * BYTES["oof_row"]) * gb),
        ]  # fmt: skip
    return Plan(
        config.name, machine, train, test, trained, tuple(items), speed, source,
        size=config.image.size, context=config.image.context,
        compression=config.data.compression, workers=config.train.workers,
    )  # fmt: skip


def format_plan(plan: Plan, *, free_gb: float | None = None) -> str:
    """The plan as a table, with the totals against the hardware's limits."""
    machine = plan.hardware
    lines = [
        f"plan for {plan.config} on {machine.name}: {plan.train_images:,} train and "
        f"{plan.test_images:,} test images, {plan.folds} folds trained",
        f"training rate {plan.rate:,.0f} img/s: {plan.rate_source}",
        "",
        f"{'stage':<11}{'what':<76}{'disk GB':>9}{'GPU h':>8}{'CPU h':>8}",
    ]
    for item in plan.items:
        disk = f"{item.gb:9.2f}" if item.gb else f"{'':9}"
        hours = f"{item.hours:8.2f}" if item.hours else f"{'':8}"
        hours = f"{'':8}{hours}" if item.cpu else hours
        mark = " (while training)" if item.transient else ""
        lines.append(f"{item.stage:<11}{(item.what + mark)[:75]:<76}{disk}{hours}")
    lines.append(f"{'total':<87}{plan.disk_gb:9.2f}{plan.hours:8.2f}{plan.cpu_hours:8.2f}")
    lines.append("")
    lines += _verdicts(plan, free_gb)
    return "\n".join(lines)


def _verdicts(plan: Plan, free_gb: float | None) -> list[str]:
    machine, out = plan.hardware, []
    limit = machine.disk_gb if machine.disk_gb is not None else free_gb
    if limit is not None:
        fits = "fits" if plan.disk_gb <= limit else "DOES NOT FIT"
        out.append(f"disk: {plan.disk_gb:.1f} GB of {limit:.0f} GB: {fits} ({limit - plan.disk_gb:+.1f} GB)")
    if machine.session_hours is not None:
        sessions = math.ceil(plan.hours / machine.session_hours)
        out.append(f"sessions: {plan.hours:.1f} GPU-hours: {sessions} session(s) of {machine.session_hours:.0f} h (a fold resumes in the next one)")
    if machine.weekly_hours is not None:
        weeks = plan.hours / machine.weekly_hours
        fits = "fits one week" if weeks <= 1 else f"needs {math.ceil(weeks)} weeks"
        out.append(f"quota: {plan.hours:.1f} of {machine.weekly_hours:.0f} GPU-hours a week ({weeks:.0%}): {fits}")
    where = "; on Kaggle run them in a CPU notebook, where they use no GPU quota" if machine.weekly_hours else ""
    out.append(f"CPU: {plan.cpu_hours:.1f} h (preprocessing, the series model){where}")
    out += _feeding(plan)
    out.append("every figure is a projection: measure one epoch before you trust the hours")
    return out


def _feeding(plan: Plan) -> list[str]:
    """Whether the config's loader keeps the devices busy, and what more cores would feed."""
    rate = partial(loader_rate, compression=plan.compression, context=plan.context, size=plan.size)
    one = rate(cores=1)
    needed = math.ceil(plan.rate / one)
    given = rate(cores=plan.workers)
    roomy = math.ceil(1.5 * plan.rate / one)  # half again: the device rate is an estimate
    if given >= 1.5 * plan.rate:
        verdict = "enough"
    elif given >= plan.rate:
        verdict = f"enough, with little margin: train.workers = {roomy} gives {rate(cores=roomy):,.0f}"
    else:
        verdict = f"too few: set train.workers = {needed} (threads; give the run that many cores)"
    # this config's rate on one device of each kind: this plan's device, scaled by B0's rates
    per_b0 = plan.rate / plan.hardware.count / plan.hardware.gpu.b0_images_per_second
    kinds = ", ".join(
        f"{gpu.name} " + " / ".join(f"{rate(cores=n) / (per_b0 * gpu.b0_images_per_second):.0f}" for n in LOADER_CORES)
        for gpu in GPUS.values()
    )  # fmt: skip
    cores = " / ".join(f"{rate(cores=n):,.0f}" for n in LOADER_CORES)
    return [
        f"feeding: the devices take {plan.rate:,.0f} img/s; the DataGenerator gives about "
        f"{one:,.0f} img/s a worker thread at {plan.size} from a {plan.compression} store at "
        f"context {plan.context} ({LOADER['source']}), so train.workers = {plan.workers} gives "
        f"{given:,.0f}: {verdict}",
        f"feeding on {' / '.join(map(str, LOADER_CORES))} cores: {cores} img/s (linear in "
        f"cores: an upper bound), which keeps busy about {kinds} devices",
    ]


def free_disk_gb(folder: Path) -> float:
    """Free space (GB) of the disk that holds `folder`, or of its nearest existing parent."""
    place = Path(folder)
    while not place.exists() and place != place.parent:
        place = place.parent
    return shutil.disk_usage(place).free / 1e9
