"""``rsna prepare``: scan every DICOM header into a metadata table, and write the labels.

Outputs, in the work folder::

    metadata.parquet        one row per DICOM file (see METADATA_COLUMNS)
    labels.parquet          the wide label table of rsna.data.labels.read_labels
    prepare.json            where the data is, and what the inputs looked like
    prepare_report.md       counts, and every oddity by image ID
    prepare_report.json     the same, for programs
    prepare_report.png      label rates and header groups
    cache/metadata/         finished scan shards, so a rerun redoes only what is missing

Slices are ordered within a series by z, ImagePositionPatient[2] (0020,0032), then by
InstanceNumber and image ID to break ties. A file whose pixels cannot be read stays in
the table with ``readable=False`` and the reason, so later stages can skip it and the
report can name it.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rsna import files
from rsna.data.dicom import check_file
from rsna.data.labels import LABELS, check_image_id, prior, read_labels
from rsna.data.paths import Competition, find_competition
from rsna.data.series import slice_order
from rsna.errors import DataWarning, RsnaError
from rsna.parallel import default_workers, parallel_map

__all__ = [
    "LABELS_FILE",
    "METADATA",
    "METADATA_COLUMNS",
    "PREPARE_JSON",
    "REPORT",
    "SHARD_DIR",
    "SHARD_SIZE",
    "PrepareError",
    "PrepareResult",
    "add_slice_order",
    "build_report",
    "data_dir",
    "format_report",
    "plot_report",
    "prepare",
    "read_metadata",
    "read_prepared_labels",
    "scan_file",
    "scan_part",
]

METADATA = "metadata.parquet"
LABELS_FILE = "labels.parquet"
PREPARE_JSON = "prepare.json"
REPORT = "prepare_report"
SHARD_DIR = Path("cache") / "metadata"
SHARD_SIZE = 4096

#: Columns of metadata.parquet, indexed by image_id.
METADATA_COLUMNS = (
    "split", "file", "patient_id", "study_uid", "series_uid", "sop_instance_uid",
    "instance_number", "z", "slice_index", "series_length", "rows", "cols",
    "pixel_spacing", "bits_stored", "pixel_representation", "intercept", "slope",
    "window_center", "window_width", "transfer_syntax", "bad_intercept", "readable", "reason",
)  # fmt: skip


class PrepareError(RsnaError):
    """The work folder or the data cannot be prepared."""


@dataclass(frozen=True)
class PrepareResult:
    """What :func:`prepare` produced."""

    work_dir: Path
    metadata: pd.DataFrame
    labels: pd.DataFrame
    report: dict


def scan_file(job: tuple[str, str, str]) -> dict[str, object]:
    """One metadata row for a DICOM file: ``job`` is (root, relative file, split)."""
    root, rel, split = job
    path = Path(root) / rel
    image_id = path.stem
    row: dict[str, object] = {"image_id": image_id, "split": split, "file": rel}
    try:
        check_image_id(image_id, where=str(path))
    except RsnaError as exc:
        return {**row, "readable": False, "reason": str(exc)}
    header, reason = check_file(path)
    if header is not None:
        row.update(
            {c: getattr(header, c) for c in _HEADER_COLUMNS}, bad_intercept=header.has_bad_intercept
        )
    return {**row, "readable": not reason, "reason": reason}


_HEADER_COLUMNS = (
    "patient_id", "study_uid", "series_uid", "sop_instance_uid", "instance_number", "z",
    "rows", "cols", "pixel_spacing", "bits_stored", "pixel_representation", "intercept",
    "slope", "window_center", "window_width", "transfer_syntax",
)  # fmt: skip


def prepare(
    data_dir: str | os.PathLike[str] | None,
    work_dir: str | os.PathLike[str],
    *,
    workers: int | None = None,
) -> PrepareResult:
    """Scan headers, write labels and the report; reuse whatever a previous run finished.

    Raises:
        rsna.data.paths.CompetitionNotFound: no competition at `data_dir`.
        rsna.data.labels.LabelError: the label CSV is malformed.
    """
    competition = find_competition(data_dir)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    jobs = _list_files(competition)
    if not jobs:
        raise PrepareError(f"{competition.train_dir}: no .dcm files found")
    metadata = _scan(jobs, competition.root, work, workers=workers or default_workers())
    metadata = add_slice_order(metadata)
    files.write_parquet(metadata, work / METADATA)
    labels = _labels(competition, work)
    report = build_report(metadata, labels, competition)
    _write_report(report, work)
    manifest = {
        "data_dir": str(competition.root),
        "label_attrs": labels.attrs,
        **_inputs(competition),
    }
    files.write_json(work / PREPARE_JSON, manifest)
    return PrepareResult(work, metadata, labels, report)


def _list_files(competition: Competition) -> list[tuple[str, str, str]]:
    jobs = []
    for split, folder in (("train", competition.train_dir), ("test", competition.test_dir)):
        if folder is None:
            continue
        names = sorted(entry.name for entry in os.scandir(folder) if entry.name.endswith(".dcm"))
        rel = folder.relative_to(competition.root)
        jobs.extend((str(competition.root), str(rel / name), split) for name in names)
    return jobs


def scan_part(
    data_dir: str | os.PathLike[str] | None,
    work_dir: str | os.PathLike[str],
    *,
    num_shards: int,
    shard_index: int,
    workers: int | None = None,
) -> int:
    """Scan this machine's share of the headers: chunks k with k % num_shards == shard_index.

    Every machine lists the same files, so they agree on the chunks; each writes its
    chunks to ``WORK/cache/metadata/``. Returns how many chunks are still missing (other
    parts'); when none is, :func:`prepare` finishes the work folder without scanning.

    Raises:
        PrepareError: `shard_index` is not in [0, num_shards).
    """
    if not 0 <= shard_index < num_shards:
        raise PrepareError(
            f"`shard_index` must be in [0, num_shards={num_shards}). Received: shard_index={shard_index}"
        )
    competition = find_competition(data_dir)
    jobs = _list_files(competition)
    if not jobs:
        raise PrepareError(f"{competition.train_dir}: no .dcm files found")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    chunks, paths = _chunks(jobs, work)
    mine = [k for k in range(len(chunks)) if k % num_shards == shard_index]
    _scan_chunks(chunks, paths, mine, workers=workers or default_workers())
    return sum(not p.exists() for p in paths)


def _chunks(jobs: list[tuple[str, str, str]], work: Path) -> tuple[list, list[Path]]:
    """The scan's chunks of SHARD_SIZE files, and the file each one is written to."""
    chunks = [jobs[i : i + SHARD_SIZE] for i in range(0, len(jobs), SHARD_SIZE)]
    shard_dir = work / SHARD_DIR
    return chunks, [shard_dir / f"shard-{i:05d}-{_digest(c)}.parquet" for i, c in enumerate(chunks)]


def _scan_chunks(chunks: list, paths: list[Path], chosen: list[int], *, workers: int) -> None:
    """Scan the chosen chunks that are not on disk yet."""
    todo = [i for i in chosen if not paths[i].exists()]
    pending = [job for i in todo for job in chunks[i]]
    rows = parallel_map(scan_file, pending, workers=workers, desc="scan headers", unit="file")
    for i in todo:
        frame = pd.DataFrame([next(rows) for _ in chunks[i]])
        files.write_parquet(_normalise(frame), paths[i])


def _scan(
    jobs: list[tuple[str, str, str]], root: Path, work: Path, *, workers: int
) -> pd.DataFrame:
    """Scan in chunks of SHARD_SIZE files; a chunk already on disk is read, not rescanned."""
    chunks, paths = _chunks(jobs, work)
    _scan_chunks(chunks, paths, list(range(len(chunks))), workers=workers)
    frames = [pd.read_parquet(p) for p in paths]
    table = pd.concat(frames) if len(frames) > 1 else frames[0]
    duplicated = table.index.duplicated()
    if duplicated.any():
        raise PrepareError(
            f"{root}: image ID {table.index[duplicated][0]} is in both the train and test folders"
        )
    return table


def _digest(shard: Sequence[tuple[str, str, str]]) -> str:
    h = hashlib.sha1()
    for _, rel, split in shard:
        h.update(f"{split}/{rel}\n".encode())
    return h.hexdigest()[:12]


_DTYPES = {
    "instance_number": "int64", "rows": "int64", "cols": "int64", "bits_stored": "int64",
    "pixel_representation": "int64", "z": "float64", "pixel_spacing": "float64",
    "intercept": "float64", "slope": "float64", "window_center": "float64",
    "window_width": "float64", "bad_intercept": "bool", "readable": "bool",
}  # fmt: skip
_FILL = {
    "instance_number": -1,
    "rows": -1,
    "cols": -1,
    "bits_stored": -1,
    "pixel_representation": -1,
    "bad_intercept": False,
}


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Fixed columns and dtypes, whatever the files held (an unreadable file has no header)."""
    frame = frame.set_index("image_id")
    for column in METADATA_COLUMNS:
        if column not in frame.columns:
            frame[column] = np.nan
    frame = frame.fillna(_FILL)
    for column in (
        "patient_id",
        "study_uid",
        "series_uid",
        "sop_instance_uid",
        "transfer_syntax",
        "reason",
    ):
        frame[column] = frame[column].fillna("").astype(str)
    frame = frame.astype({k: v for k, v in _DTYPES.items() if k in frame.columns})
    return frame[[c for c in METADATA_COLUMNS if c not in ("slice_index", "series_length")]]


def add_slice_order(metadata: pd.DataFrame) -> pd.DataFrame:
    """Add ``slice_index`` (0-based, by z within the series) and ``series_length``
    (:func:`rsna.data.series.slice_order`)."""
    frame = metadata.drop(columns=["slice_index", "series_length"], errors="ignore").copy()
    frame[["slice_index", "series_length"]] = slice_order(frame)
    return frame[list(METADATA_COLUMNS)]


def _inputs(competition: Competition) -> dict[str, object]:
    csvs = {"train_csv": competition.train_csv, "sample_csv": competition.sample_csv}
    return {name: files.fingerprint(path) for name, path in csvs.items() if path is not None}


def _labels(competition: Competition, work: Path) -> pd.DataFrame:
    """The wide labels; reused when the CSV has not changed since the last run."""
    target, manifest = work / LABELS_FILE, work / PREPARE_JSON
    if target.exists() and manifest.exists():
        previous = files.read_json(manifest)
        if previous.get("train_csv") == files.fingerprint(competition.train_csv):
            labels = pd.read_parquet(target)
            labels.attrs.update(previous.get("label_attrs", {}))
            return labels
    labels = read_labels(competition.train_csv)
    files.write_parquet(labels, target)
    return labels


def read_metadata(work_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Load metadata.parquet from a prepared work folder."""
    return _read(Path(work_dir) / METADATA)


def read_prepared_labels(work_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Load labels.parquet from a prepared work folder."""
    return _read(Path(work_dir) / LABELS_FILE)


def data_dir(work_dir: str | os.PathLike[str]) -> Path:
    """The competition folder a work folder was prepared from."""
    manifest = Path(work_dir) / PREPARE_JSON
    if not manifest.exists():
        raise PrepareError(
            f"{work_dir}: not a prepared work folder (no {PREPARE_JSON}); run `rsna prepare` first"
        )
    return Path(files.read_json(manifest)["data_dir"])


def _read(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise PrepareError(f"{path}: missing; run `rsna prepare` first")
    return pd.read_parquet(path)


# --------------------------------------------------------------------------- the report


def build_report(metadata: pd.DataFrame, labels: pd.DataFrame, competition: Competition) -> dict:
    """Counts and every oddity, by image ID."""
    train = metadata[metadata["split"] == "train"]
    test = metadata[metadata["split"] == "test"]
    unreadable = metadata[~metadata["readable"]]
    sizes = metadata.loc[metadata["rows"] > 0, ["rows", "cols"]]
    regular = sizes.value_counts().idxmax() if len(sizes) else (0, 0)
    odd = sizes[(sizes["rows"] != regular[0]) | (sizes["cols"] != regular[1])]
    groups = (
        metadata[metadata["bits_stored"] > 0]
        .groupby(["bits_stored", "pixel_representation"])
        .size()
    )
    train_ids = set(train.index)
    no_file = sorted(set(labels.index) - train_ids)
    no_label = sorted(train_ids - set(labels.index))
    report = {
        "data_dir": str(competition.root),
        "images": {"train": len(train), "test": len(test)},
        "patients": int(metadata.loc[metadata["patient_id"] != "", "patient_id"].nunique()),
        "studies": int(metadata.loc[metadata["study_uid"] != "", "study_uid"].nunique()),
        "series": int(metadata.loc[metadata["series_uid"] != "", "series_uid"].nunique()),
        "labelled_images": len(labels),
        "duplicate_label_rows_dropped": int(labels.attrs.get("duplicate_rows_dropped", 0)),
        "duplicate_label_images": list(labels.attrs.get("duplicate_images", [])),
        "unreadable": {i: r for i, r in unreadable["reason"].items()},
        "bad_intercept_fixed": sorted(metadata.index[metadata["bad_intercept"]]),
        "regular_size": f"{regular[0]}x{regular[1]}",
        "odd_size": {i: f"{r}x{c}" for i, (r, c) in odd.iterrows()},
        "header_groups": {f"bits{b}_pixrep{p}": int(n) for (b, p), n in groups.items()},
        "labels_without_file": no_file,
        "files_without_labels": no_label,
        "sop_uid_mismatch": sorted(
            metadata.index[
                (metadata["sop_instance_uid"] != "")
                & (metadata["sop_instance_uid"] != metadata.index)
            ]
        ),
        "label_rates": prior(labels).to_dict(),
        "positive_rate_by_group": _rate_by_group(train, labels),
    }
    for key, message in (
        ("unreadable", "files cannot be read"),
        ("labels_without_file", "labelled images have no file"),
        ("files_without_labels", "train files have no labels"),
        ("sop_uid_mismatch", "files have a SOPInstanceUID other than their name"),
    ):
        if report[key]:
            warnings.warn(
                f"{len(report[key])} {message}; see the prepare report", DataWarning, stacklevel=2
            )
    return report


def _rate_by_group(train: pd.DataFrame, labels: pd.DataFrame) -> dict[str, float]:
    joined = train[["bits_stored", "pixel_representation"]].join(labels["any"], how="inner")
    rates = joined.groupby(["bits_stored", "pixel_representation"])["any"].mean()
    return {f"bits{b}_pixrep{p}": float(r) for (b, p), r in rates.items()}


def _write_report(report: dict, work: Path) -> None:
    files.write_json(work / f"{REPORT}.json", report)
    files.write_text(work / f"{REPORT}.md", format_report(report))
    files.save_figure(plot_report(report), work / f"{REPORT}.png")


def format_report(report: dict) -> str:
    """The report as short Markdown, each oddity listed by image ID (at most 20 each)."""
    lines = [
        "# rsna prepare report",
        "",
        f"- data: `{report['data_dir']}`",
        f"- images: {report['images']['train']} train, {report['images']['test']} test;"
        f" {report['patients']} patients, {report['studies']} studies, {report['series']} series",
        f"- labelled images: {report['labelled_images']}",
        f"- duplicate label rows dropped: {report['duplicate_label_rows_dropped']}"
        f" ({len(report['duplicate_label_images'])} images)",
        f"- header groups (BitsStored, PixelRepresentation): {report['header_groups']}",
        f"- regular size: {report['regular_size']}",
        "- label rates: " + ", ".join(f"{k} {v:.4f}" for k, v in report["label_rates"].items()),
        "",
    ]
    sections = (
        ("Unreadable files", report["unreadable"]),
        ("Bad-intercept files fixed", report["bad_intercept_fixed"]),
        ("Not of the regular size (padded to a square on read)", report["odd_size"]),
        ("Duplicated label images", report["duplicate_label_images"]),
        ("Labelled images without a file", report["labels_without_file"]),
        ("Train files without labels", report["files_without_labels"]),
        ("SOPInstanceUID differs from the file name", report["sop_uid_mismatch"]),
    )
    for title, items in sections:
        lines.append(f"## {title}: {len(items)}")
        entries = list(items.items()) if isinstance(items, dict) else [(i, "") for i in items]
        for image_id, detail in entries[:20]:
            lines.append(f"- {image_id}" + (f": {detail}" if detail else ""))
        if len(entries) > 20:
            lines.append(f"- ... and {len(entries) - 20} more (see prepare_report.json)")
        lines.append("")
    return "\n".join(lines)


def plot_report(report: dict):  # -> matplotlib.figure.Figure
    """Label rates, and images per header group with their `any` rate."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.6), layout="constrained")
    left, right = figure.subplots(1, 2)
    rates = [report["label_rates"][c] for c in LABELS]
    left.bar(LABELS, rates, color="tab:red")
    left.set_title("Positive rate per label (train)")
    left.set_xlabel("label")
    left.set_ylabel("share of images")
    left.tick_params(axis="x", labelrotation=30)
    groups = report["header_groups"]
    names = list(groups)
    right.bar(names, [groups[n] for n in names], color="tab:blue", label="images")
    right.set_title("Header groups (BitsStored, PixelRepresentation)")
    right.set_xlabel("group")
    right.set_ylabel("images")
    twin = right.twinx()
    by_group = report["positive_rate_by_group"]
    twin.plot(
        names,
        [by_group.get(n, float("nan")) for n in names],
        "o-",
        color="tab:red",
        label="any rate",
    )
    twin.set_ylabel("any-positive rate")
    handles = right.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    right.legend(handles, ["images", "any rate"], loc="upper left")
    return figure
