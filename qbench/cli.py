"""``qbench`` command line: a thin layer over the library functions."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from qbench.version import DISTRIBUTION, __version__


def _plugins(args):
    from qbench.plugins import get_plugins

    return get_plugins(tuple(args.disable_plugin))


def _user_path(text: str, option: str) -> Path:
    """``text`` (a path the user gave with ``option``) with ``~`` expanded; a ``~user`` of
    no such user is refused rather than becoming a folder named ``~user``."""
    from qbench.registry import QbenchError

    path = Path(os.path.expanduser(text))
    if str(path).startswith("~"):
        raise QbenchError(f"{option} {text}: no such user's home folder")
    return path


def cmd_list(args) -> int:
    import json

    from qbench.catalogue import installed, render

    catalogue = installed(tuple(args.disable_plugin))
    if args.json:
        print(json.dumps(catalogue.to_json(), indent=2))
    else:
        print(render(catalogue, long=args.long))
    return 0


def cmd_validate(args) -> int:
    registry = _plugins(args).registry
    for matrix, _ in _matrices(args, registry):
        _validate(matrix, registry)
    return 0


def _validate(matrix, registry) -> None:
    """Check one matrix before any job and print its jobs (``qbench validate``)."""
    from tabulate import tabulate

    from qbench.plan.preflight import preflight

    for line in preflight(matrix, registry):
        print(f"warning: {line}", file=sys.stderr)
    rows = [
        [
            j.job_id,
            j.backbone.label,
            j.quantizer.label,
            j.lmbda,
            j.dataset.label,
            j.seed,
            j.train_id,
        ]
        for j in matrix.jobs
    ]
    print(
        tabulate(
            rows,
            headers=["job_id", "backbone", "quantizer", "lambda", "dataset", "seed", "train_id"],
        )
    )
    steps: dict[str, int] = {}
    for j in matrix.jobs:
        steps[j.train_id] = j.recipe.steps(matrix.train)
    counts: dict[int, int] = {}
    for n in steps.values():
        counts[n] = counts.get(n, 0) + 1
    parts = [
        f"{c} {'blends (no training)' if n == 0 else f'trainings of {n} steps'}"
        for n, c in sorted(counts.items(), reverse=True)
    ]
    print(
        f"\n{matrix.source}: {len(matrix.jobs)} jobs ({', '.join(parts)}); "
        f"anchor {matrix.report['anchor']!r}"
    )


def _matrices(args, registry) -> list:
    """``[(matrix, run folder)]`` of the file ``qbench run`` / ``validate`` was given: one
    matrix, or every part of a study (:mod:`qbench.plan.study`), each into its own folder,
    all read and checked before any job starts."""
    from qbench.plan.matrix import MatrixError, load_matrix
    from qbench.plan.study import read_study

    out = _user_path(args.out, "--out") if getattr(args, "out", None) else None
    study = read_study(args.matrix)
    if study is None:
        matrix = load_matrix(args.matrix, registry, args.set)
        return [(matrix, out or Path("runs") / matrix.name)]
    parts = [load_matrix(p, registry, args.set) for p in study.parts]
    names = [m.name for m in parts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise MatrixError(
            f"{study.source}: parts: two parts have the run name {twice[0]!r}; each part "
            "runs into a folder named after it: give them distinct `name`s"
        )
    root = out or Path("runs") / study.name
    return [(m, root / m.name) for m in parts]


def cmd_run(args) -> int:
    from qbench.plan.preflight import preflight
    from qbench.report import write_report
    from qbench.run.runner import run_matrix

    plugins = _plugins(args)
    runs = _matrices(args, plugins.registry)
    if len(runs) > 1:  # a study: every part checked before the first job of any
        for matrix, _ in runs:
            preflight(matrix, plugins.registry)
    executor = {
        key: value
        for key, value in (
            ("kind", args.executor),
            ("partition", args.slurm_partition),
            ("gpus_per_job", args.slurm_gpus_per_job),
            ("cpus_per_job", args.slurm_cpus_per_job),
            ("mem_gb", args.slurm_mem_gb),
            ("time_min", args.slurm_time),
            ("array_parallelism", args.slurm_array_parallelism),
        )
        if value is not None
    }
    code = 0
    for matrix, out in runs:
        summary = run_matrix(
            matrix,
            out,
            workers=args.workers,
            device=args.device,
            force=args.force,
            append=args.append,
            rerun_failed=args.rerun_failed,
            disable=tuple(args.disable_plugin),
            show_progress=not args.no_progress,
            executor=executor,
            jobs_per_gpu=args.jobs_per_gpu,
        )
        report = write_report(out, anchor=matrix.report["anchor"])
        print()
        print(report.summary)
        status = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items()))
        print(
            f"\n{summary.total} jobs ({status}); results in {out}/results.csv, "
            f"report in {out}/report.md"
        )
        code |= 0 if summary.statuses.get("ok", 0) == summary.total else 1
    return code


def cmd_status(args) -> int:
    from qbench.report.status import run_status, status_text

    print(status_text(run_status(Path(args.run_dir)), verbose=args.all))
    return 0


def _reference_catalogue():
    """:func:`qbench.reference.catalogue`, a malformed catalogue file said in one line."""
    from qbench import reference
    from qbench.registry import QbenchError

    own = os.environ.get(reference.CATALOGUE_ENV)
    try:
        settings, curves = reference.catalogue()
        for key in ("commit", "url"):
            if not isinstance(settings.get(key), str):
                raise ValueError(f"{key!r} is not a string")
        for name, src in curves.items():
            if not isinstance(src.file, str) or not isinstance(src.sha256, str):
                raise ValueError(f"curves.{name}: 'file' and 'sha256' must be strings")
    except QbenchError:
        raise
    except Exception as exc:  # TOML errors, missing or unknown keys, wrong types
        where = f"${reference.CATALOGUE_ENV} ({own})" if own else "the reference catalogue"
        raise QbenchError(
            f"{where}: not a reference catalogue ({type(exc).__name__}: {exc})"
        ) from None
    return settings, curves


def _check_mirror(url: str, settings: dict) -> None:
    """A ``--url`` mirror template must fill in and name a scheme qbench downloads from."""
    from urllib.parse import urlsplit

    from qbench.registry import QbenchError

    try:
        filled = url.format(commit=settings["commit"], file="x.json")
    except (KeyError, IndexError, ValueError) as exc:
        raise QbenchError(
            f"--url {url!r}: a template with {{commit}} and {{file}} only ({exc!r})"
        ) from None
    if "{file}" not in url or urlsplit(filled).scheme not in ("http", "https", "ftp", "file"):
        raise QbenchError(
            f"--url {url!r}: expected an http(s)://, ftp:// or file:// URL template with "
            "{file} (and {commit})"
        )


def cmd_reference_curves(args) -> int:
    from tabulate import tabulate

    from qbench import reference
    from qbench.registry import QbenchError

    settings, curves = _reference_catalogue()
    if args.dir is not None:
        args.dir = str(_user_path(args.dir, "--dir"))
        if Path(args.dir).exists() and not Path(args.dir).is_dir():
            raise QbenchError(f"--dir {args.dir} is not a folder")
    if args.url is not None:
        _check_mirror(args.url, settings)
    if args.download:
        reference.download(args.name or None, args.dir, args.url)
    where = reference.folder(args.dir)
    rows = [
        [
            name,
            src.dataset,
            src.psnr,
            "yes" if (where / src.file).is_file() else "no",
            src.description,
        ]
        for name, src in curves.items()
    ]
    print(tabulate(rows, headers=["name", "dataset", "psnr", "downloaded", "description"]))
    print(
        f"\nfolder: {where}; source: CompressAI results/image/kodak at {settings['commit'][:10]} "
        "(BSD 3-Clause Clear License, InterDigital)"
    )
    return 0


def verify_zoo(
    registry,
    dataset,
    backbones=None,
    qualities=None,
    bpp_tolerance: float | None = None,
    psnr_tolerance: float | None = None,
    reference_dir: str | None = None,
    echo=print,
):
    """Measure each (backbone, quality) with a published point on ``dataset`` (the run wing's
    :class:`~qbench.run.zoo.ZooMeter`) and compare it (:mod:`qbench.report.zoo`); the checks."""
    from qbench.report import zoo
    from qbench.run.zoo import WeightsUnavailable, ZooMeter

    checks = zoo.planned_checks(registry, backbones, qualities, reference_dir)
    meter = ZooMeter(registry, dataset, zoo.MEASURED)
    bpp_tol = zoo.BPP_TOLERANCE if bpp_tolerance is None else bpp_tolerance
    psnr_tol = zoo.PSNR_TOLERANCE if psnr_tolerance is None else psnr_tolerance
    for check in (c for c in checks if c.verdict == "pending"):
        try:
            measured = meter.measure(check.backbone, check.quality)
        except WeightsUnavailable as exc:
            echo(zoo.unavailable(check, str(exc)))
            continue
        echo(zoo.judge(check, measured, bpp_tol, psnr_tol))
    return checks


def cmd_verify_zoo(args) -> int:
    from qbench.report.zoo import checks_table, published_dataset

    registry = _plugins(args).registry
    backbones = args.backbone or None
    name = args.dataset or published_dataset(registry, backbones)
    dataset = registry.build("dataset", name, path=args.images)
    checks = verify_zoo(
        registry,
        dataset,
        backbones=backbones,
        qualities=args.quality or None,
        bpp_tolerance=args.bpp_tolerance,
        psnr_tolerance=args.psnr_tolerance,
        reference_dir=args.reference_dir,
    )
    print()
    print(checks_table(checks))
    verdicts = [c.verdict for c in checks]
    print(
        f"\n{verdicts.count('ok')} ok, {verdicts.count('FAIL')} FAIL, "
        f"{verdicts.count('skipped')} skipped"
    )
    return 1 if "FAIL" in verdicts or "ok" not in verdicts else 0


def cmd_report(args) -> int:
    from qbench.report import bd_table_text, write_report

    if args.format == "compressai-json":
        return _report_compressai(args)
    report = write_report(
        Path(args.run_dir),
        anchor=args.anchor,
        write=args.format == "md",
        min_overlap=args.min_overlap,
        rate=args.rate,
    )
    if args.format == "md":
        print(report.summary)
        print(f"\nwrote {Path(args.run_dir) / 'report.md'}")
    else:
        print(bd_table_text(report.bd_rows, args.format, report.bd_missing), end="")
    return 0


def cmd_summarize(args) -> int:
    """``qbench summarize RESULTS``: the Markdown summary of the committed runs, printed,
    written to ``--out`` or put between the markers of ``--update``'s README."""
    from qbench.report.summary import summarize, update
    from qbench.results import atomic_write_text

    text = summarize(Path(args.results))
    if args.update:
        changed = update(Path(args.update), text)
        print(f"{'updated' if changed else 'unchanged'}: {args.update}")
    elif args.out:
        atomic_write_text(Path(args.out), text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def _report_compressai(args) -> int:
    """``qbench report RUN --format compressai-json``: one CompressAI results file per curve."""
    from qbench.report.compressai_json import write_compressai_json

    paths = write_compressai_json(Path(args.run_dir), args.out)
    for path in paths:
        print(f"wrote {path}")
    folder = paths[0].parent
    print(f"plot them with: python -m compressai.utils.plot -f {folder}/*.json -o rd.png")
    return 0


def cmd_plot(args) -> int:
    from qbench.report.overlay import overlay

    figures = overlay(
        args.run_dirs, args.out, backbone=args.backbone, dataset=args.dataset, rate=args.rate
    )
    for f in figures:
        print(f"wrote {f.path} ({f.backbone} on {f.dataset}: {', '.join(f.runs)}; {f.xlabel})")
    return 0


def cmd_export(args) -> int:
    from qbench.registry import QbenchError
    from qbench.results import RunDir

    if args.format != "qbench":
        return _export_for(args)
    from qbench.run.export import JobKey, find_row

    out = _export_target(args.out)
    run_dir = RunDir(args.run_dir)
    row = find_row(run_dir, JobKey(args.quantizer, args.lmbda, args.seed, args.backbone))
    train_id = row["train_id"]
    if row.get("status") != "ok":
        raise QbenchError(
            f"{run_dir.root}: the job {row.get('backbone')}/{args.quantizer}@{args.lmbda:g} "
            f"seed {args.seed} did not finish (status {row.get('status')!r}); nothing to export"
        )
    try:
        run_dir.export_weights(train_id, out, half=args.half)
    except (QbenchError, OSError):
        raise
    except Exception as exc:  # a checkpoint that does not load
        first = (str(exc).splitlines() or [""])[0][:160]
        raise QbenchError(
            f"{run_dir.checkpoint_path(train_id)}: the job's checkpoint does not load "
            f"({type(exc).__name__}: {first})"
        ) from None
    size = out.stat().st_size
    print(f"wrote {args.out} ({size / 1e6:.2f} MB): the weights of train group {train_id}")
    return 0


def _export_target(text: str) -> Path:
    """``--out`` of ``export``: a file to write (not a folder; its folder writable)."""
    from qbench.registry import QbenchError

    out = _user_path(text, "--out")
    if out.is_dir():
        raise QbenchError(f"--out {out} is a directory; name the file to write")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QbenchError(f"--out {out}: cannot create {out.parent} ({exc.strerror})") from None
    if not os.access(out.parent, os.W_OK):
        raise QbenchError(f"--out {out}: {out.parent} is not writable")
    return out


def _export_for(args) -> int:
    """``qbench export --format FMT``: the job's weights as another tool's model loads them."""
    from qbench.run.export import JobKey, export_job

    key = JobKey(args.quantizer, args.lmbda, args.seed, args.backbone)
    out = _export_target(args.out)
    done = export_job(args.run_dir, _plugins(args).registry, key, args.format, out, args.half)
    size = done.path.stat().st_size
    print(
        f"wrote {done.path} ({size / 1e6:.2f} MB): the weights of train group {done.train_id} "
        f"({done.job}) in {args.format} format"
        + (f", architecture {done.architecture}" if done.architecture else "")
    )
    if done.usage():
        print(done.usage())
    return 0


def cmd_new_plugin(args) -> int:
    from qbench.registry import QbenchError
    from qbench.scaffold import write_plugin

    registry = _plugins(args).registry
    if (args.kind, args.name) in registry:
        entry = registry.get(args.kind, args.name)
        raise QbenchError(
            f"plugin name {args.name!r}: a {args.kind} of that name is already registered by "
            f"plugin {entry.plugin!r} ({entry.provider}); choose another name"
        )
    root = write_plugin(args.name, args.kind, args.out)
    print(f"wrote {root}; install it (with pytest and pytest-xdist) with:")
    print(f'    pip install -e "{root}[test]"')
    print("then check it with qbench's conformance suite:")
    print(f"    python -m pytest {root}")
    return 0


#: The exit statuses, as ``qbench --help`` lists them.
EXIT_STATUS = """exit status:
  0    done (every job of a run finished ok)
  1    a run finished, but some job did not finish ok (see its row and report.md)
  2    bad input: a matrix, option, path or file that cannot be used (one line says which),
       or a file qbench cannot read or write (permissions, disk full)
  3    an internal error of qbench or a plugin: one line says where its traceback was written
  130  interrupted (Ctrl-C); finished jobs are kept, the same command resumes"""


def _internal_error(exc: BaseException) -> int:
    """Write the traceback of an unexpected exception to a file, say where in one line: 3."""
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        fd, where = tempfile.mkstemp(prefix="qbench-traceback-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"qbench {__version__}: {' '.join(sys.argv)}\n{text}")
    except OSError:
        where = "(it could not be written; standard error follows)"
        print(text, file=sys.stderr)
    first = (str(exc).splitlines() or [""])[0][:200]
    print(
        f"qbench: internal error: {type(exc).__name__}: {first}; traceback in {where}",
        file=sys.stderr,
    )
    return 3


def _int_at_least(minimum: int, what: str):
    """An argparse type: a whole number of at least ``minimum``, called ``what`` in errors."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_whole_number = _int_at_least(0, "a whole number >= 0")


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a matrix key (train.steps=200, eval.max_images=4); repeatable; "
        "validated like the file and part of the job ids (except the keys that change no "
        "weight: train.log_every, train.checkpoint_*, [monitor], [executor])",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qbench",
        description="Benchmark quantization surrogates for learned image compression.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--version", action="version", version=f"qbench {__version__} (distribution {DISTRIBUTION})"
    )
    p.add_argument(
        "--disable-plugin",
        action="append",
        default=[],
        metavar="NAME",
        help="skip the plugin with this entry-point name (repeatable; "
        "also QBENCH_DISABLE_PLUGINS=a,b)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="run (or resume) a benchmark matrix")
    r.add_argument(
        "matrix",
        nargs="?",
        help="matrix TOML file, or a study file (parts = [matrix files]) whose parts run "
        "into OUT/<part name>/ (default: the embedded quick matrix)",
    )
    r.add_argument("--out", help="run directory (default: runs/<matrix or study name>)")
    r.add_argument(
        "--workers",
        type=_whole_number,
        default=None,
        help="local worker processes (default: --jobs-per-gpu per GPU, else one single-thread "
        "worker per core, at most one per train group); 0: no worker process, the jobs run "
        "one after the other in this process (for a debugger or a profiler; a plugin that "
        "crashes the process ends the run, and nothing is retried)",
    )
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    r.add_argument(
        "--force",
        action="store_true",
        help="re-run finished jobs too; a run directory holding another matrix is moved to "
        "OUT/superseded/ first",
    )
    r.add_argument(
        "--append",
        action="store_true",
        help="add this matrix's jobs to a run directory that holds another matrix (each row "
        "keeps its own configuration; the report never averages two)",
    )
    r.add_argument(
        "--rerun-failed",
        action="store_true",
        help="re-run failed and diverged jobs (finished ones are kept)",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument(
        "--jobs-per-gpu",
        type=_positive_int,
        default=1,
        metavar="K",
        help="local executor: K jobs share each GPU at a time (small models)",
    )
    r.add_argument(
        "--executor",
        choices=["local", "submitit-local", "slurm"],
        default=None,
        help="where jobs run (default: the matrix's [executor] kind, else local); "
        "submitit-local and slurm need pip install 'qbench-lic[cluster]'",
    )
    cluster = r.add_argument_group("cluster (--executor slurm; override [executor] in the matrix)")
    cluster.add_argument("--slurm-partition", metavar="NAME", default=None)
    cluster.add_argument("--slurm-gpus-per-job", type=int, metavar="N", default=None)
    cluster.add_argument("--slurm-cpus-per-job", type=_positive_int, metavar="N", default=None)
    cluster.add_argument("--slurm-mem-gb", type=float, metavar="GB", default=None)
    cluster.add_argument(
        "--slurm-time", type=_positive_int, metavar="MINUTES", default=None, help="time limit"
    )
    cluster.add_argument(
        "--slurm-array-parallelism",
        type=_positive_int,
        metavar="N",
        default=None,
        help="jobs of the array running at once",
    )
    _add_set(r)
    r.set_defaults(func=cmd_run)

    st = sub.add_parser(
        "status",
        help="per job: finished, running, failed or pending, from the run directory alone",
        description="Read a run directory (no scheduler needed) and say for every job whether "
        "it finished, failed, is running (with its step), was interrupted (resumable from a "
        "snapshot) or is pending, with the scheduler job id and log paths where recorded.",
    )
    st.add_argument("run_dir")
    st.add_argument("--all", action="store_true", help="list finished jobs too")
    st.set_defaults(func=cmd_status)

    ls = sub.add_parser(
        "list",
        help="plugins and what they registered",
        description="Every registered quantizer, backbone, dataset, metric and logger, and the "
        "plugins that failed to load. The listing is cached per set of installed plugins "
        "(their versions and code), so it imports no plugin when nothing changed.",
    )
    ls.add_argument("--long", action="store_true", help="full descriptions, parameters, code")
    ls.add_argument("--json", action="store_true", help="everything, as JSON")
    ls.set_defaults(func=cmd_list)

    v = sub.add_parser("validate", help="expand and check a matrix; print the jobs")
    v.add_argument("matrix", nargs="?", help="matrix or study TOML file")
    _add_set(v)
    v.set_defaults(func=cmd_validate)

    n = sub.add_parser(
        "new-plugin",
        help="write a pip-installable plugin package that passes conformance",
        description="Write a small pip-installable plugin package: pyproject.toml with the "
        "qbench entry point, a documented module with a working example of the kind, a "
        "matrix that uses it and a test that runs the conformance suite on it.",
    )
    n.add_argument("name", help="the name the plugin registers (e.g. halfnoise)")
    n.add_argument("--kind", required=True, choices=["quantizer", "backbone", "dataset", "metric"])
    n.add_argument("--out", help="folder to create (default: ./qbench-NAME)")
    n.set_defaults(func=cmd_new_plugin)

    ex = sub.add_parser(
        "export",
        help="write one job's trained weights to a file (e.g. a shared initialisation)",
        description="Write the trained weights of one job of a run directory as a state dict; "
        "a backbone entry loads it with checkpoint = FILE (fine-tuning from it).",
    )
    ex.add_argument("run_dir")
    ex.add_argument("--quantizer", required=True, help="the job's quantizer label")
    ex.add_argument("--lambda", dest="lmbda", type=float, required=True, help="the job's lambda")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--out", required=True, help="file to write")
    ex.add_argument(
        "--half",
        action="store_true",
        help="store the weights as float16 (small tensors, e.g. bounds, stay exact)",
    )
    ex.add_argument(
        "--format",
        choices=["qbench", "compressai"],
        default="qbench",
        help="qbench: the stored checkpoint, quantizers included (default); compressai: the "
        "state dict of CompressAI's own model class (from_state_dict, "
        "compressai.utils.eval_model), refused when the job's quantizers decode otherwise",
    )
    ex.add_argument(
        "--backbone",
        default=None,
        help="the job's backbone label, when the run trained several with this quantizer",
    )
    ex.set_defaults(func=cmd_export)

    rc = sub.add_parser(
        "reference-curves",
        help="published Kodak curves (CompressAI's zoo, VTM, BPG, ...): list, --download",
        description="List the published rate-distortion curves a matrix can draw with "
        "[report] reference_curves, and fetch them once with --download (SHA-256 checked).",
    )
    rc.add_argument("name", nargs="*", help="curves to download (default: all)")
    rc.add_argument("--download", action="store_true", help="fetch the files")
    rc.add_argument(
        "--dir",
        help="where they are kept (default: $QBENCH_REFERENCE_CURVES or "
        "~/.cache/qbench/reference-curves)",
    )
    rc.add_argument("--url", help="a mirror: a URL template with {commit} and {file}")
    rc.set_defaults(func=cmd_reference_curves)

    vz = sub.add_parser(
        "verify-zoo",
        help="evaluate CompressAI's pretrained models on Kodak and compare with the published "
        "points",
        description="Build each backbone that declares a published curve with pretrained = Q "
        "(CompressAI's zoo loader, torch hub's cache), evaluate it on the dataset the curve "
        "was measured on (Kodak) with qbench's evaluation and compare bitstream bpp and PSNR "
        "with the published point. Needs the reference curves (qbench reference-curves "
        "--download) and the zoo weights.",
    )
    vz.add_argument(
        "--images",
        "--kodak",
        dest="images",
        required=True,
        help="folder holding the dataset's images (Kodak: kodim01..24.png)",
    )
    vz.add_argument(
        "--dataset",
        help="registered dataset to evaluate on (default: the one the published curves were "
        "measured on, as the reference-curve catalogue says)",
    )
    vz.add_argument("--backbone", action="append", default=[], help="repeatable (default: all)")
    vz.add_argument("--quality", action="append", type=int, default=[], help="repeatable")
    vz.add_argument("--bpp-tolerance", type=float, default=0.01, help="relative (0.01 = 1 %%)")
    vz.add_argument("--psnr-tolerance", type=float, default=0.05, help="dB")
    vz.add_argument("--reference-dir", help="where the reference curves are")
    vz.set_defaults(func=cmd_verify_zoo)

    rep = sub.add_parser("report", help="rebuild tables and plots of a run directory")
    rep.add_argument("run_dir")
    rep.add_argument("--anchor", help="BD-rate reference (a quantizer label)")
    rep.add_argument(
        "--min-overlap",
        type=float,
        default=None,
        help="flag BD-rates whose curves share less of their PSNR range "
        "(default: the matrix's [report] min_overlap, 0.75)",
    )
    rep.add_argument(
        "--rate",
        choices=["bitstream", "likelihood"],
        default=None,
        help="the rate of every BD-rate, comparison and plot: the real bitstream's bpp or "
        "the likelihood estimate (default: the matrix's [report] rate, bitstream)",
    )
    rep.add_argument(
        "--out",
        default=None,
        help="--format compressai-json: the folder to write to (default: RUN_DIR/compressai)",
    )
    rep.add_argument(
        "--format",
        choices=["md", "csv", "json", "compressai-json"],
        default="md",
        help="md writes report.md and the plots; csv/json print the BD-rate table and "
        "write nothing; compressai-json writes one CompressAI results file per curve "
        "(compressai.utils.plot draws them)",
    )
    rep.set_defaults(func=cmd_report)

    sm = sub.add_parser(
        "summarize",
        help="a Markdown summary of the run folders under a folder (results/README.md's)",
        description="For each run folder under RESULTS (a folder with manifest.json and "
        "report.md): what was run, on what, how long, and its paired BD-rate tables as its "
        "report computes them; then the comparisons of published points in "
        "RESULTS/published. Printed, written to --out, or put between the lines "
        "'<!-- qbench summarize: begin -->' and '<!-- qbench summarize: end -->' of "
        "--update's file (nothing else of it changes).",
    )
    sm.add_argument("results", metavar="RESULTS", help="the folder of run folders (results/)")
    where = sm.add_mutually_exclusive_group()
    where.add_argument("--out", help="write the summary to this file")
    where.add_argument(
        "--update",
        metavar="README",
        help="replace what README holds between the summarize markers by the summary",
    )
    sm.set_defaults(func=cmd_summarize)

    pl = sub.add_parser(
        "plot",
        help="overlay the RD curves of several run directories (a figure per backbone, dataset)",
        description="Draw the RD curves of several run directories in one figure per "
        "(backbone, dataset), as each run's report reads them (mean over seeds, seed std as "
        "error bars); legend entries are RUN: QUANTIZER. One rate axis never mixes the real "
        "bitstream rate with the likelihood estimate: --rate auto takes the bitstream when "
        "every run has it, the likelihood estimate when none has it, and refuses a mix.",
    )
    pl.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    pl.add_argument(
        "--out",
        default=".",
        help="folder for overlay_<backbone>_<dataset>.png (default: the current folder), "
        "or an image file (.png, .pdf, .svg) when there is one figure",
    )
    pl.add_argument("--backbone", help="only this backbone label")
    pl.add_argument("--dataset", help="only this dataset label")
    pl.add_argument(
        "--rate",
        choices=["auto", "bitstream", "likelihood"],
        default="auto",
        help="the rate axis: the real bitstream's bpp or the likelihood estimate "
        "(default auto: bitstream when every run has it)",
    )
    pl.set_defaults(func=cmd_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    from qbench.registry import QbenchError

    warnings.filterwarnings("ignore", category=FutureWarning, module="torch")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except QbenchError as exc:
        print(f"qbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nqbench: interrupted; finished jobs are kept, run the same command to resume",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:  # `qbench list | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
        return 0
    except OSError as exc:  # a file the system would not read or write (disk full, rights)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"qbench: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except Exception as exc:
        return _internal_error(exc)


if __name__ == "__main__":
    sys.exit(main())
