"""Command-line interface: ``rsna <subcommand>``. Thin: parse, call the package, print.

Nothing imports this module. Every subcommand prints what it wrote; bad input ends
with ``rsna: error: <message>`` and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rsna.errors import RsnaError


def _synth(args: argparse.Namespace) -> None:
    from rsna.synthetic import SynthConfig, make_competition

    config = SynthConfig(
        patients=args.patients,
        studies=args.studies,
        slices=args.slices,
        size=args.size,
        seed=args.seed,
        test_fraction=args.test_fraction,
    )
    result = make_competition(args.out, config, workers=args.workers, force=args.force)
    images = result.manifest["images"]
    print(
        f"wrote a synthetic competition to {result.root}: {images['train']} train and {images['test']} test images"
    )


def _prepare(args: argparse.Namespace) -> None:
    from rsna.metadata import REPORT, format_report, prepare

    result = prepare(args.data_dir, args.out, workers=args.workers)
    print(format_report(result.report))
    print(f"wrote {result.work_dir}/metadata.parquet, labels.parquet and {REPORT}.md/.json/.png")


def _folds(args: argparse.Namespace) -> None:
    from rsna.folds import FOLDS_FILE, fold_table, make_folds, write_folds
    from rsna.metadata import read_metadata, read_prepared_labels

    metadata, labels = read_metadata(args.work_dir), read_prepared_labels(args.work_dir)
    folds = make_folds(metadata, labels, n_folds=args.n_folds, seed=args.seed)
    path = write_folds(folds, metadata, Path(args.work_dir) / FOLDS_FILE)
    print(fold_table(folds, labels, metadata).to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {path}")


def _preprocess(args: argparse.Namespace) -> None:
    from rsna.cache import CacheSpec, build_cache
    from rsna.windowing import parse_windows

    spec = CacheSpec(size=args.size, windows=parse_windows(args.windows), curve=args.curve)
    result = build_cache(
        args.work_dir,
        spec,
        out=args.out,
        shard_size=args.shard_size,
        workers=args.workers,
        force=args.force,
    )
    print(
        f"cache {result.path}: {result.images} images ({spec.describe()}); "
        f"{result.shards_written} shards written, {result.shards_reused} reused; "
        f"{len(result.unreadable)} unreadable (zeros): {sorted(result.unreadable)[:10]}"
    )


def _demo(args: argparse.Namespace) -> None:
    from rsna.metadata import format_report, prepare
    from rsna.synthetic import SynthConfig, make_competition

    out = Path(args.out)
    start = time.perf_counter()
    data = out / "data"
    if not (data / "stage_2_train.csv").exists():
        make_competition(
            data,
            SynthConfig(patients=24, studies=2, slices=16, size=256, seed=args.seed),
            workers=args.workers,
        )
    prepared = prepare(data, out / "work", workers=args.workers)
    print(format_report(prepared.report))
    print(f"demo finished in {time.perf_counter() - start:.1f} s; outputs in {out}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsna", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic competition in Kaggle's layout")
    p.add_argument("out", help="folder to write")
    p.add_argument("--patients", type=int, default=20)
    p.add_argument("--studies", type=int, default=2, help="most studies per patient")
    p.add_argument("--slices", type=int, default=20, help="slices per series")
    p.add_argument("--size", type=int, default=512, help="rows and columns of a regular image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--test-fraction", type=float, default=0.25, help="share of patients in the test set"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing competition")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.set_defaults(run=_synth)

    p = sub.add_parser(
        "prepare", help="scan DICOM headers into metadata, write labels and a report"
    )
    p.add_argument(
        "data_dir",
        nargs="?",
        default=None,
        help="competition folder (default: search /kaggle/input, then .)",
    )
    p.add_argument("--out", required=True, help="work folder")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.set_defaults(run=_prepare)

    p = sub.add_parser("folds", help="split the labelled images into patient-grouped folds")
    p.add_argument("work_dir", help="a prepared work folder")
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_folds)

    p = sub.add_parser("preprocess", help="window every slice once into a sharded uint8 cache")
    p.add_argument("work_dir", help="a prepared work folder")
    p.add_argument("--size", type=int, default=256)
    p.add_argument(
        "--windows", default="brain,subdural,soft", help="names or center/width, comma-separated"
    )
    p.add_argument("--curve", choices=["linear", "sigmoid"], default="linear")
    p.add_argument("--shard-size", type=int, default=1024, help="images per shard file")
    p.add_argument(
        "--out", default=None, help="cache folder (default: WORK/cache/<size>_<windows>)"
    )
    p.add_argument("--force", action="store_true", help="replace a cache made with other options")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.set_defaults(run=_preprocess)

    p = sub.add_parser("demo", help="run the whole path on a synthetic competition")
    p.add_argument("--out", default="demo", help="folder for everything the demo writes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rsna`` console script."""
    args = _parser().parse_args(argv)
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        run(args)
    except RsnaError as exc:
        print(f"rsna: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
