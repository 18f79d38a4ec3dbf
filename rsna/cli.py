"""Command-line interface: ``rsna <subcommand>``. Thin: parse, call the package, print.

Nothing imports this module. Every subcommand prints what it wrote; bad input ends
with ``rsna: error: <message>`` and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rsna.errors import RsnaError

__all__ = ["main"]


def _synth(args: argparse.Namespace) -> None:
    from rsna.data.synthetic import SynthConfig, make_competition

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
    from rsna.data.metadata import REPORT, format_report, prepare

    result = prepare(args.data_dir, args.out, workers=args.workers)
    print(format_report(result.report))
    print(f"wrote {result.work_dir}/metadata.parquet, labels.parquet and {REPORT}.md/.json/.png")


def _folds(args: argparse.Namespace) -> None:
    from rsna.data.folds import FOLDS_FILE, fold_table, make_folds, write_folds
    from rsna.data.metadata import read_metadata, read_prepared_labels

    metadata, labels = read_metadata(args.work_dir), read_prepared_labels(args.work_dir)
    folds = make_folds(metadata, labels, n_folds=args.n_folds, seed=args.seed)
    path = write_folds(folds, metadata, Path(args.work_dir) / FOLDS_FILE)
    print(fold_table(folds, labels, metadata).to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {path}")


def _preprocess(args: argparse.Namespace) -> None:
    from rsna.data.cache import CacheSpec, build_cache
    from rsna.data.windowing import parse_windows

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


def _config(args: argparse.Namespace):
    from rsna.config import load_config, parse_override

    overrides = dict(parse_override(item) for item in args.set or [])
    return load_config(args.config, overrides=overrides)


def _train(args: argparse.Namespace) -> None:
    from rsna.training import runner
    from rsna.training.strategy import choose_strategy

    config = _config(args)
    results = runner.train(
        config,
        _fold_list(args.fold),
        stage=args.stage,
        strategy=choose_strategy(args.strategy),
        force=args.force,
    )
    print(f"trained {len(results)} stage-{args.stage} fold(s); outputs in {config.run_dir}")


def _fold_list(text: str):
    return "all" if text == "all" else [int(k) for k in text.split(",")]


def _embed(args: argparse.Namespace) -> None:
    from rsna.training.embed import embed_folds

    written = embed_folds(_config(args), _fold_list(args.fold))
    for paths in written:
        print(", ".join(str(p) for p in paths.values()))


def _run_config(path: str):
    """A config file, or a run folder holding the config.toml that training saved."""
    from rsna.config import load_config

    target = Path(path)
    if target.is_dir():
        target = target / "config.toml"
    return load_config(target)


def _evaluate(args: argparse.Namespace) -> None:
    from rsna.evaluate import compare_stages, evaluate, format_scores, format_stages

    config = _run_config(args.target)
    result = evaluate(config.run_dir, config.data.work_dir)
    print(format_scores(result.scores))
    both = compare_stages(config.run_dir, config.data.work_dir, result)
    if both is not None:
        print(format_stages(both))
    report = result.report
    print(
        f"CV weighted log loss {report['weighted_log_loss']:.4f} over {report['images']} images "
        f"({len(report['folds'])} folds); prior {report['prior_weighted_log_loss']:.4f}; "
        f"ratio {report['ratio_to_prior']:.2f}"
    )
    print(f"wrote {config.run_dir}/oof.csv, evaluate.json and roc_pr.png")


def _predict(args: argparse.Namespace) -> None:
    from rsna.training import runner

    config = _config(args)  # argparse has checked that --stage is 1 or 2
    result = runner.predict(config, stage=args.stage)
    report = result.report
    views = report["tta"] if args.stage == 1 else f"reverse={report['tta_reverse']}"
    print(
        f"stage {args.stage}: predicted {report['images']} images with {len(report['folds'])} "
        f"fold model(s), TTA {views}, ensemble {config.predict.ensemble}"
    )
    for key in ("unreadable_given_prior", "missing_files_given_prior"):
        if report[key]:
            print(f"{key.replace('_', ' ')}: {', '.join(report[key])}")
    print(f"wrote {result.submission}")


def _validate(args: argparse.Namespace) -> None:
    from rsna.data.paths import find_competition
    from rsna.submission import validate_submission

    sample = args.sample or find_competition(args.data_dir).sample_csv
    frame = validate_submission(args.submission, sample)
    print(f"{args.submission}: valid ({len(frame)} rows, {len(frame) // 6} images)")


def _demo(args: argparse.Namespace) -> None:
    from rsna.demo import run_demo

    run_demo(args.out, seed=args.seed, workers=args.workers)


CONFIG_HELP = "a config TOML file, or the name of a shipped config (demo, baseline)"


def _workers_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")


def _config_arguments(
    p: argparse.ArgumentParser, *, folds: bool = False, stage: str | None = None
) -> None:
    """The arguments of every command that runs a config."""
    p.add_argument("config", help=CONFIG_HELP)
    if folds:
        p.add_argument("--fold", default="all", help="a fold, a comma-separated list, or all")
    if stage:
        p.add_argument("--stage", type=int, default=1, choices=[1, 2], help=stage)
    p.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value"
    )


def _parser() -> argparse.ArgumentParser:
    from rsna.training.strategy import STRATEGIES

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
    _workers_argument(p)
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
    _workers_argument(p)
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
    _workers_argument(p)
    p.set_defaults(run=_preprocess)

    p = sub.add_parser("train", help="train folds of a config (resumes an interrupted fold)")
    _config_arguments(p, folds=True, stage="1: slice model; 2: series model on its embeddings")
    p.add_argument("--force", action="store_true", help="retrain folds that already finished")
    p.add_argument("--strategy", default="auto", choices=STRATEGIES)
    p.set_defaults(run=_train)

    p = sub.add_parser(
        "embed", help="stage 1's embeddings of each fold's own images and the test set"
    )
    _config_arguments(p, folds=True)
    p.set_defaults(run=_embed)

    p = sub.add_parser("evaluate", help="score out-of-fold predictions against the prior")
    p.add_argument("target", metavar="RUN", help="a config, or a run folder (its config.toml)")
    p.set_defaults(run=_evaluate)

    p = sub.add_parser(
        "predict", help="predict the test set with every fold and write submission.csv"
    )
    _config_arguments(p, stage="1: the slice models; 2: the series models")
    p.set_defaults(run=_predict)

    p = sub.add_parser("validate", help="check a submission file against the sample submission")
    p.add_argument("submission")
    p.add_argument(
        "--sample", default=None, help="sample submission (default: found with the data)"
    )
    p.add_argument("--data-dir", default=None, help="competition folder to search for the sample")
    p.set_defaults(run=_validate)

    p = sub.add_parser("demo", help="run the whole path on a synthetic competition")
    p.add_argument("--out", default="demo", help="folder for everything the demo writes")
    p.add_argument("--seed", type=int, default=0)
    _workers_argument(p)
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
