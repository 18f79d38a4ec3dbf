"""Command-line interface: ``rsna <subcommand>``. Thin: parse, call the package, print.

Nothing imports this module. Every subcommand prints what it wrote. One error boundary
(:func:`main`) turns every expected error into ``rsna: error: <message>`` and exit
status 2: a bad argument (checked where it is parsed), any :class:`rsna.RsnaError`
(bad data, config or model file), and an ``OSError`` on a user's path. Anything else
is a bug: one line says so, exit status 1, and ``--debug`` shows the traceback.
TensorFlow's start-up noise is muted unless ``--verbose``.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from rsna.errors import RsnaError

__all__ = ["main"]

#: Commands that load TensorFlow.
_TF_COMMANDS = frozenset({"train", "embed", "predict", "external", "explain", "view", "demo"})


# ------------------------------------------------------------------ argument types


def _integer(name: str, *, low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `low`, with a Keras-style message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"`{name}` must be an integer. Received: {name}={text!r}"
            ) from None
        if value < low:
            rule = "positive" if low == 1 else f">= {low}"
            raise argparse.ArgumentTypeError(f"`{name}` must be {rule}. Received: {name}={value}")
        return value

    return parse


def _number(
    name: str, *, high: float = math.inf, rule: str = "a positive number"
) -> Callable[[str], float]:
    """An argparse type: a finite number strictly between 0 and `high`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0.0 < value < high:
            raise argparse.ArgumentTypeError(f"`{name}` must be {rule}. Received: {name}={text!r}")
        return value

    return parse


def _fraction(name: str) -> Callable[[str], float]:
    """An argparse type: a finite number strictly between 0 and 1."""
    return _number(name, high=1.0, rule="a number in (0, 1)")


def _folder(name: str) -> Callable[[str], Path]:
    """An argparse type: a folder, or a path where one can be made (not a file)."""

    def parse(text: str) -> Path:
        path = Path(text).expanduser()
        if path.exists() and not path.is_dir():
            raise argparse.ArgumentTypeError(
                f"`{name}` must be a folder. Received: {name}={text!r}, which is a file"
            )
        return path

    return parse


def _smoothing(text: str) -> tuple[float, ...]:
    """An argparse type: comma-separated smoothing weights (:func:`rsna.smooth.parse_weights`)."""
    from rsna.smooth import SmoothError, parse_weights

    try:
        return parse_weights(text)
    except SmoothError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fold_list(text: str) -> str | list[int]:
    """``all``, or comma-separated fold numbers >= 0."""
    if text == "all":
        return "all"
    parse = _integer("fold", low=0)
    return [parse(part.strip()) for part in text.split(",")]


class _Parser(argparse.ArgumentParser):
    """argparse, with errors worded like every other rsna error."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"rsna: error: {message}\n")


def _synth(args: argparse.Namespace) -> None:
    from rsna.data.synthetic import SynthConfig, make_competition

    options = ("patients", "studies", "slices", "size", "seed", "test_fraction", "label_noise")
    config = SynthConfig(**{name: getattr(args, name) for name in options})
    if args.layout == "cq500":
        from rsna.data.cq500 import make_cq500

        planted = make_cq500(args.out, config, workers=args.workers)
        print(
            f"wrote a synthetic CQ500 to {args.out}: {len(planted)} patients, "
            f"{int(planted['any'].sum())} with a planted bleed (planted.csv), three reads each "
            "(reads.csv)"
        )
        return
    result = make_competition(args.out, config, workers=args.workers, force=args.force)
    images = result.manifest["images"]
    print(
        f"wrote a synthetic competition to {result.root}: {images['train']} train and {images['test']} test images"
    )


def _prepare(args: argparse.Namespace) -> None:
    from rsna.data.metadata import REPORT, format_report, prepare, scan_part

    if args.num_shards > 1:
        missing = scan_part(
            args.data_dir,
            args.out,
            num_shards=args.num_shards,
            shard_index=args.shard_index,
            workers=args.workers,
        )
        if missing:
            print(
                f"part {args.shard_index} of {args.num_shards} scanned; {missing} chunks are "
                "other parts'. When every part is done, run `rsna prepare` without "
                "--num-shards/--shard-index to finish (it scans only what is missing)"
            )
            return
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
    from rsna.data.cache import build_cache

    config = _config(args)
    spec, codec = config.image.spec, config.codec
    result = build_cache(
        config.data.work_dir,
        spec,
        codec=codec,
        out=args.out,
        shard_size=args.shard_size,
        workers=args.workers,
        force=args.force,
        num_shards=args.num_shards,
        shard_index=args.shard_index,
    )
    per_slice = result.bytes / max(result.images, 1) / 1000
    print(
        f"store {result.path}: {result.images} images ({spec.describe()}), codec {codec.tag}; "
        f"{result.shards_written} shards written, {result.shards_reused} reused"
    )
    if result.full_view:
        print(f"{len(result.full_view)} slices show no head and keep their full field of view")
    if not result.complete:
        print(
            f"part {args.shard_index} of {args.num_shards} done; {result.shards_missing} shards "
            "are other parts'. When every part is done, run the same command without "
            "--num-shards/--shard-index to write the index (it redoes only what is missing)"
        )
        return
    print(
        f"{result.bytes / 1e6:.1f} MB, {per_slice:.1f} kB a slice; {len(result.unreadable)} "
        f"unreadable (zeros): {sorted(result.unreadable)[:10]}"
    )


def _command_line(command: str, args: argparse.Namespace) -> str:
    """`command` with this invocation's config and --set options, quoted for a shell."""
    words = ["rsna", command, args.config]
    for item in args.set or []:
        words += ["--set", item]
    return shlex.join(words)


def _config(args: argparse.Namespace, *, store: bool = False):
    """The config of a command; with `store`, its store is checked first (the error
    quotes the exact ``rsna preprocess`` command that builds it)."""
    from rsna.config import ConfigError, load_config, parse_override

    target = Path(args.config)
    if target.is_dir() and (target / "prepare.json").is_file():
        raise ConfigError(
            f"`{args.command}` takes a config, not a work folder: the config names its work "
            f"folder and store. Received: {args.config!r}; e.g. `rsna {args.command} baseline "
            f"--set data.work_dir={shlex.quote(repr(str(target)))}`"
        )
    overrides = dict(parse_override(item) for item in args.set or [])
    config = load_config(args.config, overrides=overrides)
    if store:
        from rsna.preflight import check_store

        check_store(config, command=_command_line("preprocess", args))
    return config


def _train(args: argparse.Namespace) -> None:
    from rsna.training.strategy import choose_strategy, cluster_from_env

    config = _config(args, store=args.stage == 1)
    cluster = cluster_from_env()
    if args.stage != 1 and cluster is not None and not cluster.chief:
        print(f"{cluster.task}: stage {args.stage} trains on the chief alone; nothing to do here")
        return
    # Before the runner: MultiWorkerMirroredStrategy must start TensorFlow's runtime itself.
    strategy = choose_strategy(
        args.strategy, multi_worker=args.stage == 1, timeout=args.collective_timeout
    )
    from rsna.training import runner

    results = runner.train(config, args.fold, stage=args.stage, strategy=strategy, force=args.force)
    if cluster is not None and args.stage == 1 and not cluster.chief:
        print(
            f"{cluster.task}: trained {len(results)} fold(s) with the chief, which wrote {config.run_dir}"
        )
        return
    print(f"trained {len(results)} stage-{args.stage} fold(s); outputs in {config.run_dir}")


def _embed(args: argparse.Namespace) -> None:
    from rsna.training.embed import embed_folds
    from rsna.training.strategy import choose_strategy

    config = _config(args, store=True)
    written = embed_folds(config, args.fold, strategy=choose_strategy(args.strategy))
    for paths in written:
        print(", ".join(str(p) for p in paths.values()))


def _run_config(path: str):
    """A shipped config's name, a config file, or a run folder holding the config.toml that
    training saved (a path, by :func:`rsna.config.is_config_name`'s rule)."""
    from rsna.config import is_config_name, load_config

    target = Path(path)
    if not is_config_name(path) and target.is_dir():
        target = target / "config.toml"
    return load_config(target)


def _blend(args: argparse.Namespace) -> None:
    from rsna.blend import BlendResult, blend_runs
    from rsna.stack import StackParams, strongest_features

    params = (
        None
        if args.stack is None
        else StackParams(neighbours=args.neighbours, patient=args.patient, seed=args.seed)
    )
    result, table = blend_runs(
        args.runs,
        args.out,
        work_dir=args.work,
        weights=args.weights,
        stack=args.stack,
        stack_params=params,
    )
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    if isinstance(result, BlendResult):
        by_fold = ", ".join(f"fold {k}: {w}" for k, w in result.fold_weighting.items())
        print(f"\nweighting: {result.weighting} for the test ({by_fold})")
        print("weights (fitted on every fold, used for the test):")
        print(result.weights.to_string(float_format=lambda v: f"{v:.3f}"))
        how = "weights cross-validated across folds"
    else:
        print(f"\nstack: LightGBM per label over ±{args.neighbours} slices; strongest features:")
        print(", ".join(strongest_features(result, top=8).index))
        how = "each fold predicted by trees trained on the other folds"
    best = table.drop(columns="blend").loc["weighted"]
    print(
        f"blend CV {table.loc['weighted', 'blend']:.4f} ({how}); "
        f"best single run {best.min():.4f} ({best.idxmin()})"
    )
    print(
        f"wrote {args.out}/oof.csv, evaluate.json, blend.png, predictions_test.csv and submission.csv"
    )


def _intensity_reference(config):
    """The intensity baseline on the run's store, or None, saying why, when the run
    reads no finished store or its windows cannot show blood."""
    from rsna.data.cache import StoreMissing, complete_store
    from rsna.intensity import IntensityError, intensity_baseline

    try:
        store = complete_store(config.data.work_dir, config.image.spec, config.codec)
        # kept in the run folder, which evaluate writes anyway: the work folder may be
        # read-only (an earlier session's output, attached as a Kaggle dataset)
        return intensity_baseline(config.data.work_dir, store, keep_in=config.run_dir)
    except (StoreMissing, IntensityError) as exc:
        print(f"intensity baseline: not computed ({_one_line(str(exc))})")
        return None


def _evaluate(args: argparse.Namespace) -> None:
    from rsna.evaluate import compare_stages, evaluate, format_scores, format_stages

    config = _run_config(args.target)
    reference = _intensity_reference(config)
    result = evaluate(config.run_dir, config.data.work_dir, baseline=reference and reference.slice)
    print(format_scores(result.scores))
    both = compare_stages(
        config.run_dir, config.data.work_dir, result, baseline=reference and reference.neighbours
    )
    if both is not None:
        print(format_stages(both))
    report = result.report
    print(
        f"CV weighted log loss {report['weighted_log_loss']:.4f} over {report['images']} images "
        f"({len(report['folds'])} folds); prior {report['prior_weighted_log_loss']:.4f}; "
        f"ratio {report['ratio_to_prior']:.2f}"
    )
    print(f"wrote {config.run_dir}/oof.csv, evaluate.json and roc_pr.png")


def _postprocess(args: argparse.Namespace) -> None:
    from rsna import runs
    from rsna.data.metadata import read_prepared_labels
    from rsna.evaluate import evaluate, read_oof
    from rsna.metrics import per_label_log_loss
    from rsna.smooth import smooth_stage

    config = _run_config(args.target)
    stage = runs.stage_dir(config.run_dir, args.stage)
    result = smooth_stage(
        stage, config.data.work_dir, weights=args.smooth, space=args.space, clip=config.predict.clip
    )
    smoothed = evaluate(result.folder, config.data.work_dir)
    oof, _ = read_oof(stage)
    labels = read_prepared_labels(config.data.work_dir).loc[oof.index]
    before = per_label_log_loss(labels, oof)["weighted"]
    after = smoothed.report["weighted_log_loss"]
    weights = ",".join(f"{w:g}" for w in args.smooth)
    print(
        f"stage {args.stage} smoothed along z ({weights}, {args.space}): CV weighted log loss "
        f"{after:.4f}, unsmoothed {before:.4f} (ratio {after / before:.3f}) over {len(oof)} images"
    )
    print(
        f"wrote {result.folder}/fold_*/oof.csv, oof.csv, evaluate.json, roc_pr.png and submission.csv"
    )


def _predict(args: argparse.Namespace) -> None:
    from rsna.predictions import PredictError
    from rsna.training import runner
    from rsna.training.strategy import choose_strategy

    if args.dicom_dir is not None:
        _predict_dicom_dir(args)
        return
    if args.out is not None or args.threshold is not None:
        raise PredictError("--out and --threshold go with --dicom-dir, which is not given")
    stage = args.stage or 1  # argparse has checked --stage
    config = _config(args, store=stage == 1)
    result = runner.predict(config, stage=stage, strategy=choose_strategy(args.strategy))
    report = result.report
    views = report["tta"] if stage == 1 else f"reverse={report['tta_reverse']}"
    print(
        f"stage {stage}: predicted {report['images']} images with {len(report['folds'])} "
        f"fold model(s), TTA {views}, ensemble {config.predict.ensemble}"
    )
    for key in ("unreadable_given_prior", "missing_files_given_prior"):
        if report[key]:
            print(f"{key.replace('_', ' ')}: {', '.join(report[key])}")
    print(f"wrote {result.submission}")


def _moved_run(config, path: Path):
    """`config` with its run folder where its ``config.toml`` is, if `path` is a run's
    config.toml beside trained folds and the config names another folder (the run was
    copied or moved); said on screen."""
    import dataclasses

    from rsna import runs

    here = path.parent
    if path.name != runs.CONFIG_FILE or not runs.fold_dirs(here, holding=runs.BEST_MODEL):
        return config
    if config.run_dir.resolve() == here.resolve():
        return config
    print(f"{path}: trained in {config.run_dir}; predicting with the fold models beside it")
    return dataclasses.replace(config, data=dataclasses.replace(config.data, out_dir=here))


def _predict_dicom_dir(args: argparse.Namespace) -> None:
    from rsna.data.studies import SKIP_KINDS
    from rsna.predictions import PredictError
    from rsna.training.external import OUT_FILES, predict_dicom_dir
    from rsna.training.strategy import choose_strategy

    if args.out is None:
        raise PredictError("--dicom-dir needs --out, the folder for the predictions")
    config = _moved_run(_config(args), Path(args.config))
    threshold = 0.5 if args.threshold is None else args.threshold
    result = predict_dicom_dir(
        config,
        args.dicom_dir,
        args.out,
        stage=args.stage,
        threshold=threshold,
        strategy=choose_strategy(args.strategy),
    )
    report, counts = result.report, result.report["files"]
    skipped = [f"{n} {kind}" for kind, n in counts.items() if n and kind in SKIP_KINDS]
    print(
        f"{args.dicom_dir}: {sum(counts.values())} files, {report['slices']} CT slices in "
        f"{report['studies']} studies; skipped {', '.join(skipped) or 'none'}; "
        f"{report['unreadable']} unreadable"
    )
    if report["stage"] == 1 and args.stage is None:
        print(f"stage 1 only: stage 2 is not trained for every fold ({config.stage_dir(2)})")
    print(
        f"stage {report['stage']}: folds {', '.join(report['folds'])}, TTA {report['tta']}, "
        f"ensemble {report['ensemble']}; {report['positive_studies']} of {report['studies']} "
        f"studies positive (any >= {threshold:g})"
    )
    tables = ", ".join(OUT_FILES[k] for k in ("slices", "studies", "skipped", "unreadable"))
    print(
        f"wrote {tables}, {OUT_FILES['report']} and {report['positive_studies']} figures "
        f"({OUT_FILES['figures']}/) to {args.out}"
    )


def _external(args: argparse.Namespace) -> None:
    from rsna.training.external import EXTERNAL_FILES, evaluate_cq500
    from rsna.training.strategy import choose_strategy

    config = _moved_run(_config(args), Path(args.config))
    result = evaluate_cq500(
        config,
        args.cq500,
        args.out,
        stage=args.stage,
        bootstrap=args.bootstrap,
        seed=args.seed,
        strategy=choose_strategy(args.strategy),
    )
    report = result.report
    print(f"CQ500: {report['patients']} patients read and predicted, stage {report['stage']}")
    for key in ("read_without_slices", "predicted_without_reads"):
        if report[key]:
            print(f"{key.replace('_', ' ')}: {', '.join(report[key][:10])}")
    print(
        f"{'label':18s} {'AUC':>6s} {'95% CI':>15s} {'sens':>6s} {'spec':>6s} {'thr':>6s} {'pos':>5s}"
    )
    for label, row in result.scores.iterrows():
        ci = f"{row['auc_low']:.3f}-{row['auc_high']:.3f}"
        print(
            f"{label:18s} {row['auc']:6.3f} {ci:>15s} {row['sensitivity']:6.3f} "
            f"{row['specificity']:6.3f} {row['threshold']:6.3f} {int(row['positives']):5d}"
        )
    names = ", ".join(EXTERNAL_FILES[k] for k in ("patients", "report", "roc"))
    print(f"wrote {names} and {EXTERNAL_FILES['predictions']}/ to {args.out}")


def _explain(args: argparse.Namespace) -> None:
    from rsna.training.saliency import explain_image

    config = _config(args)
    path = explain_image(config, args.image, fold=args.fold, out=args.out)
    print(f"image {args.image}: wrote {path}")


def _view(args: argparse.Namespace) -> None:
    from rsna.view import most_positive, study_slices, view_study

    config = _config(args)
    explained = {}
    if args.saliency:
        from rsna.training.saliency import any_saliency

        top = most_positive(study_slices(config, args.study), n=args.saliency)
        explained = any_saliency(config, top)
    path = view_study(
        config, args.study, out=args.out, max_slices=args.max_slices, explained=explained
    )
    print(f"study {args.study}: wrote {path}")


def _validate(args: argparse.Namespace) -> None:
    from rsna.data.paths import find_competition
    from rsna.submission import validate_submission

    sample = args.sample or find_competition(args.data_dir).sample_csv
    frame = validate_submission(args.submission, sample)
    print(f"{args.submission}: valid ({len(frame)} rows, {len(frame) // 6} images)")


def _plan(args: argparse.Namespace) -> None:
    from rsna.data.folds import FOLDS_FILE, read_folds
    from rsna.plan import format_plan, free_disk_gb, hardware, plan_run

    config = _config(args)
    folds_csv = Path(config.data.work_dir) / FOLDS_FILE
    n_folds = args.n_folds or (read_folds(folds_csv).nunique() if folds_csv.is_file() else 5)
    plan = plan_run(
        config,
        machine=hardware(args.gpus),
        slices=args.slices,
        n_folds=n_folds,
        folds=args.folds,
        rate=args.rate,
        stage2=not args.stage1_only,
    )
    free = None if plan.hardware.disk_gb is not None else free_disk_gb(config.run_dir)
    print(format_plan(plan, free_gb=free))


def _demo(args: argparse.Namespace) -> None:
    from rsna.config import parse_override
    from rsna.demo import run_demo

    overrides = dict(parse_override(item) for item in args.set or [])
    run_demo(args.out, seed=args.seed, workers=args.workers, overrides=overrides)


def _config_help() -> str:
    """The help of a config argument, naming the configs that ship (read from the package)."""
    from rsna.config import shipped_configs

    return (
        f"the name of a shipped config ({', '.join(shipped_configs())}), or a path: a name "
        "with no folder and no .toml is always a shipped config, so write ./my.toml for a file"
    )


def _workers_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=_integer("workers", low=1),
        default=None,
        help="processes (default: all cores)",
    )


def _parts_arguments(p: argparse.ArgumentParser) -> None:
    """--num-shards and --shard-index: this machine's share of the work."""
    p.add_argument(
        "--num-shards",
        type=_integer("num_shards", low=1),
        default=1,
        help="split the work into this many parts, one per machine",
    )
    p.add_argument(
        "--shard-index",
        type=_integer("shard_index", low=0),
        default=0,
        help="which part this machine does (0 .. num_shards - 1)",
    )


def _config_arguments(
    p: argparse.ArgumentParser,
    *,
    folds: bool = False,
    stage: str | None = None,
    stage_default: int | None = 1,
) -> None:
    """The arguments of every command that runs a config."""
    p.add_argument("config", help=_config_help())
    if folds:
        p.add_argument(
            "--fold", type=_fold_list, default="all", help="a fold, a comma-separated list, or all"
        )
    if stage:
        p.add_argument("--stage", type=int, default=stage_default, choices=[1, 2], help=stage)
    p.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value"
    )


def _models_arguments(p: argparse.ArgumentParser, *, default: str) -> None:
    """The config, the stage whose models predict (`default` says which when not given)
    and the distribution strategy, of a command that predicts."""
    from rsna.training.strategy import STRATEGIES

    _config_arguments(
        p,
        stage=f"1: the slice models; 2: the series models (default: {default})",
        stage_default=None,
    )
    p.add_argument("--strategy", default="auto", choices=STRATEGIES)


def _common() -> argparse.ArgumentParser:
    """--verbose and --debug, accepted before or after the command."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--verbose", action="store_true", default=argparse.SUPPRESS, help="show TensorFlow's logs"
    )
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback of an unexpected error",
    )
    return common


def _parser() -> argparse.ArgumentParser:
    from rsna import runs
    from rsna.blend import WEIGHTINGS
    from rsna.smooth import SMOOTHING, SPACES
    from rsna.stack import STACKERS
    from rsna.training.strategy import STRATEGIES

    common = _common()
    parser = _Parser(
        prog="rsna",
        description="RSNA Intracranial Hemorrhage Detection: from raw DICOMs to a validated "
        "Kaggle submission.",
        parents=[common],
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    p = sub.add_parser(
        parents=[common], name="synth", help="write a synthetic competition in Kaggle's layout"
    )
    p.add_argument("out", type=_folder("out"), help="folder to write")
    from rsna.data.synthetic import SLICE_SPREAD, SynthConfig

    d = SynthConfig()
    p.add_argument("--patients", type=_integer("patients", low=1), default=d.patients)
    p.add_argument(
        "--studies",
        type=_integer("studies", low=1),
        default=d.studies,
        help="most studies per patient",
    )
    p.add_argument(
        "--slices",
        type=_integer("slices", low=1),
        default=d.slices,
        help=f"typical slices per series; each has this within {round(100 * SLICE_SPREAD)}%%",
    )
    p.add_argument(
        "--size",
        type=_integer("size", low=1),
        default=d.size,
        help="rows and columns of a regular image",
    )
    p.add_argument("--seed", type=_integer("seed", low=0), default=d.seed)
    p.add_argument(
        "--test-fraction",
        type=_fraction("test_fraction"),
        default=d.test_fraction,
        help="share of patients in the test set",
    )
    p.add_argument(
        "--label-noise",
        type=_fraction("label_noise"),
        default=d.label_noise,
        help="share of the borderline labels (thin, faint, just under the floor) flipped",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing competition")
    p.add_argument(
        "--layout",
        choices=("rsna", "cq500"),
        default="rsna",
        help="the competition's layout, or CQ500's (reads.csv and a folder per patient), "
        "an external test set with known truth",
    )
    _workers_argument(p)
    p.set_defaults(run=_synth)

    p = sub.add_parser(
        parents=[common],
        name="prepare",
        help="scan DICOM headers into metadata, write labels and a report",
    )
    p.add_argument(
        "data_dir",
        nargs="?",
        default=None,
        help="competition folder (default: search /kaggle/input, then .)",
    )
    p.add_argument("--out", type=_folder("out"), required=True, help="work folder")
    _workers_argument(p)
    _parts_arguments(p)
    p.set_defaults(run=_prepare)

    p = sub.add_parser(
        parents=[common], name="folds", help="split the labelled images into patient-grouped folds"
    )
    p.add_argument("work_dir", help="a prepared work folder")
    p.add_argument("--n-folds", type=_integer("n_folds", low=2), default=5)
    p.add_argument("--seed", type=_integer("seed", low=0), default=0)
    p.set_defaults(run=_folds)

    p = sub.add_parser(
        parents=[common],
        name="preprocess",
        help="window every slice once into the store a config reads (its size, windows, "
        "curve, crop, compression and quality)",
    )
    _config_arguments(p)
    _parts_arguments(p)
    p.add_argument(
        "--shard-size",
        type=_integer("shard_size", low=1),
        default=1024,
        help="images per shard file",
    )
    p.add_argument(
        "--out",
        type=_folder("out"),
        default=None,
        help="store folder (default: WORK/cache/<size>_<windows>_<codec>, where training looks)",
    )
    p.add_argument("--force", action="store_true", help="replace a store made with other options")
    _workers_argument(p)
    p.set_defaults(run=_preprocess)

    p = sub.add_parser(
        parents=[common], name="train", help="train folds of a config (resumes an interrupted fold)"
    )
    _config_arguments(p, folds=True, stage="1: slice model; 2: series model on its embeddings")
    p.add_argument(
        "--retrain",
        "--force",
        dest="force",
        action="store_true",
        help="train the chosen folds anew, replacing what they hold (a finished fold, or "
        "one trained with other config values, which is otherwise an error)",
    )
    p.add_argument(
        "--strategy",
        default="auto",
        choices=STRATEGIES,
        help="auto: several workers when TF_CONFIG lists them, else a TPU, else every GPU",
    )
    p.add_argument(
        "--collective-timeout",
        type=_number("collective_timeout"),
        default=None,
        metavar="SECONDS",
        help="with several workers: fail a step that waits longer than this for the others "
        "(default: no limit; a dead worker is detected by its heartbeats in seconds)",
    )
    p.set_defaults(run=_train)

    p = sub.add_parser(
        parents=[common],
        name="embed",
        help="stage 1's embeddings of each fold's own images and the test set",
    )
    _config_arguments(p, folds=True)
    p.add_argument("--strategy", default="auto", choices=STRATEGIES)
    p.set_defaults(run=_embed)

    p = sub.add_parser(
        parents=[common],
        name="blend",
        help="blend runs' predictions, with weights cross-validated across folds",
    )
    p.add_argument("runs", metavar="RUN", nargs="+", help="stage folders: RUN or RUN/stage2")
    p.add_argument(
        "--weights",
        choices=("auto", *WEIGHTINGS),
        default="auto",
        help="equal, one set for every label (shared), one per label, or chosen by a nested "
        "CV (auto, the default)",
    )
    p.add_argument(
        "--stack",
        choices=STACKERS,
        default=None,
        help="instead of weights, a second-level model per label over each slice's and its "
        "neighbours' predictions (needs pip install 'rsna[stack]')",
    )
    p.add_argument(
        "--neighbours",
        type=_integer("neighbours", low=0),
        default=2,
        help="with --stack: slices on each side, by z (default 2)",
    )
    p.add_argument(
        "--no-patient",
        dest="patient",
        action="store_false",
        help="with --stack: leave out the study's and the patient's other studies' summaries",
    )
    p.add_argument("--seed", type=int, default=0, help="with --stack: the trees' seed")
    p.add_argument("--out", type=_folder("out"), required=True, help="folder to write")
    p.add_argument("--work", type=Path, default=None, help="work folder (default: the first run's)")
    p.set_defaults(run=_blend)

    p = sub.add_parser(
        parents=[common], name="evaluate", help="score out-of-fold predictions against the prior"
    )
    p.add_argument(
        "target",
        metavar="RUN",
        help="a shipped config's name, a config file, or a run folder (a path: its config.toml)",
    )
    p.set_defaults(run=_evaluate)

    p = sub.add_parser(
        parents=[common],
        name="postprocess",
        help="smooth a stage's predictions along z, with its own CV and submission",
    )
    p.add_argument(
        "target",
        metavar="RUN",
        help="a shipped config's name, a config file, or a run folder (a path: its config.toml)",
    )
    p.add_argument(
        "--smooth",
        type=_smoothing,
        default=SMOOTHING,
        metavar="W,W,W",
        help="weights over slices s-k..s+k, an odd count "
        f"(default {','.join(f'{w:g}' for w in SMOOTHING)}: the 2nd place's)",
    )
    p.add_argument(
        "--space",
        choices=SPACES,
        default="probability",
        help="average the probabilities (default) or the logits",
    )
    p.add_argument("--stage", type=int, choices=sorted(runs.STAGES), default=1)
    p.set_defaults(run=_postprocess)

    p = sub.add_parser(
        parents=[common],
        name="predict",
        help="predict the test set (or a folder of DICOM studies) with every fold",
    )
    _models_arguments(p, default="1; with --dicom-dir, 2 where it is trained for every fold")
    p.add_argument(
        "--dicom-dir",
        type=_folder("dicom_dir"),
        help="predict every CT slice under this folder (any structure) instead of the test set",
    )
    p.add_argument("--out", type=_folder("out"), help="with --dicom-dir: where the predictions go")
    p.add_argument(
        "--threshold",
        type=_fraction("threshold"),
        help="with --dicom-dir: a study is positive when its any is at least this (0.5)",
    )
    p.set_defaults(run=_predict)

    p = sub.add_parser(
        parents=[common],
        name="explain",
        help="where the slice model looks: each label's saliency on one image, as a PNG",
    )
    _config_arguments(p)
    p.add_argument("--image", required=True, help="an image ID of the work folder")
    p.add_argument(
        "--fold",
        type=_integer("fold", low=0),
        help="the fold model (default: the one that did not train on the image)",
    )
    p.add_argument("--out", type=Path, help="the PNG (default: RUN/explain/<image>.png)")
    p.set_defaults(run=_explain)

    p = sub.add_parser(
        parents=[common],
        name="view",
        help="one study's slices in z order with its labels and both stages' probabilities",
    )
    _config_arguments(p)
    p.add_argument("--study", required=True, help="a StudyInstanceUID of the work folder")
    p.add_argument("--out", type=Path, help="the PNG (default: RUN/views/<study>.png)")
    p.add_argument(
        "--max-slices",
        type=_integer("max_slices", low=1),
        default=48,
        help="draw every k-th slice past this many",
    )
    p.add_argument(
        "--saliency",
        type=_integer("saliency", low=0),
        default=2,
        help="the any saliency of this many most positive slices (0: none, no TensorFlow)",
    )
    p.set_defaults(run=_view)

    p = sub.add_parser(
        parents=[common],
        name="external",
        help="score a trained run on CQ500 (reads.csv and the patients' DICOM folders)",
    )
    _models_arguments(p, default="2 where it is trained for every fold")
    p.add_argument("--cq500", type=_folder("cq500"), required=True, help="the CQ500 folder")
    p.add_argument("--out", type=_folder("out"), required=True, help="where the report goes")
    p.add_argument(
        "--bootstrap",
        type=_integer("bootstrap", low=1),
        default=1000,
        help="patient resamples for the AUC's 95%% interval",
    )
    p.add_argument("--seed", type=_integer("seed", low=0), default=0, help="seeds the bootstrap")
    p.set_defaults(run=_external)

    p = sub.add_parser(
        parents=[common],
        name="plan",
        help="the disk of every file and the GPU-hours of every stage, before any work",
    )
    _config_arguments(p)
    p.add_argument(
        "--gpus",
        default="t4x2",
        help="t4x2 or p100 (Kaggle's notebooks, with their 20 GB, 12-hour sessions and "
        "30 GPU-hours a week), or GPU[xN] for your machine: t4, p100, v100, a100, e.g. "
        "v100x4 (default t4x2)",
    )
    p.add_argument(
        "--slices",
        type=_integer("slices", low=1),
        default=None,
        help="train and test images (default: the competition's 874,035)",
    )
    p.add_argument(
        "--n-folds",
        type=_integer("n_folds", low=2),
        default=None,
        help="the folds the images are split into (default: folds.csv's, else 5)",
    )
    p.add_argument(
        "--folds",
        type=_integer("folds", low=1),
        default=None,
        help="how many of them are trained (default: all)",
    )
    p.add_argument(
        "--rate",
        type=_number("rate"),
        default=None,
        metavar="IMAGES_PER_SECOND",
        help="your measured training rate on one device, instead of the published figures",
    )
    p.add_argument("--stage1-only", action="store_true", help="leave out embedding and stage 2")
    p.set_defaults(run=_plan)

    p = sub.add_parser(
        parents=[common],
        name="validate",
        help="check a submission file against the sample submission",
    )
    p.add_argument("submission")
    p.add_argument(
        "--sample", default=None, help="sample submission (default: found with the data)"
    )
    p.add_argument("--data-dir", default=None, help="competition folder to search for the sample")
    p.set_defaults(run=_validate)

    p = sub.add_parser(
        parents=[common], name="demo", help="run the whole path on a synthetic competition"
    )
    p.add_argument(
        "--out", type=_folder("out"), default="demo", help="folder for everything the demo writes"
    )
    p.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override a demo config value"
    )
    p.add_argument("--seed", type=_integer("seed", low=0), default=0)
    _workers_argument(p)
    p.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rsna`` console script: the one error boundary."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage and the error
        return int(exc.code or 0)
    debug = getattr(args, "debug", False)
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        if args.command in _TF_COMMANDS:
            from rsna.training.quiet import load_tensorflow_quietly, tensorflow_defaults

            tensorflow_defaults()
            if not getattr(args, "verbose", False):
                load_tensorflow_quietly()
        run(args)
    except RsnaError as exc:
        status = _fail(f"rsna: error: {_one_line(str(exc))}", 2)
        if exc.exit_now:  # destructors could wait forever on a broken runtime
            sys.stdout.flush()
            os._exit(status)
        return status
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"rsna: error: {_one_line(f'{where}{exc.strerror or exc}')}", 2)
    except KeyboardInterrupt:
        return _fail("rsna: interrupted", 130)
    except Exception as exc:  # noqa: BLE001 - the boundary: anything else is a bug
        if debug:
            traceback.print_exc()
        hint = "" if debug else "; rerun with --debug for the traceback"
        return _fail(
            _one_line(f"rsna: internal error, a bug in rsna ({type(exc).__name__}: {exc}){hint}"), 1
        )
    return 0


def _one_line(message: str) -> str:
    """`message` on one line: text quoted from a library (Keras's, with its newlines and
    indentation) is joined with single spaces."""
    return " ".join(message.split())


def _fail(message: str, status: int) -> int:
    print(message, file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
