"""The ``vireid`` command: pipeline stages, ``repro``, ``publish``/``restore``, ``search``, ``recipe``, ``mlflow-ui``.

Run it where ``params.yaml`` lives (or point ``--params`` at one)::

    vireid train --params params.yaml        # any stage: synth prepare train evaluate register tune
    vireid repro                             # params.yaml checked, then dvc repro register (not tune)
    vireid repro tune                        # dvc repro of other target(s); dvc options pass through
    vireid publish                           # dvc.lock, params.yaml, metrics, registration -> the MLflow run
    vireid restore RUN_ID --dest DIR         # ... and back into a checkout (then: dvc pull)
    vireid search q.jpg --gallery photos/ --model models:/vireid@champion --top-k 5
    vireid mlflow-ui                         # MLflow UI on http://127.0.0.1:5000
    vireid recipe sysu_agw                   # recipes/sysu_agw.yaml -> params.yaml (prints the changes)
    vireid tune apply                        # the tune stage's best S and T -> params.yaml

This module parses arguments only; the work is in :mod:`vireid.stages` (the same functions
the DVC entry points ``pipelines/*.py`` call), :mod:`vireid.tracking.pipeline_state` and
:mod:`vireid.retrieval` and :mod:`vireid.recipes`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from vireid.data import MODALITY_CODES

STAGES = ("synth", "prepare", "train", "evaluate", "register", "tune")


def _stage(stage: str) -> ModuleType:
    """:mod:`vireid.stages.<stage>` (imported on demand: Ray is loaded only by the stages using it)."""
    return importlib.import_module(f"vireid.stages.{stage}")


def _tracking_uri(args: argparse.Namespace) -> str:
    """``--tracking-uri``, else ``track`` of ``--params`` resolved against the current folder."""
    from vireid.tracking.store import local_store, resolve_target

    if args.tracking_uri:
        return str(args.tracking_uri)
    if Path(args.params).is_file():
        from vireid.stages.entry import load_config

        cfg = load_config(args.params)
        return resolve_target(cfg.track, Path.cwd()).tracking_uri
    return local_store(Path.cwd())[0]


def _cmd_stage(args: argparse.Namespace, extra: list[str]) -> int:
    if getattr(args, "action", None) == "apply":
        return _cmd_tune_apply(args, extra)
    _stage(args.command).main(["--params", args.params, *extra])
    return 0


def _cmd_tune_apply(args: argparse.Namespace, extra: list[str]) -> int:
    """``vireid tune apply [--best FILE]``: the tune stage's best S and T -> params.yaml."""
    from vireid.recipes import apply_tuned

    parser = argparse.ArgumentParser(prog="vireid tune apply")
    parser.add_argument("--best", default="outputs/tune/best_params.yaml",
                        help="the tune stage's best trial (default outputs/tune/best_params.yaml)")
    best = parser.parse_args(extra).best
    changes = apply_tuned(args.params, best)
    if not changes:
        print(f"{args.params}: already holds the best trial of {best}; nothing changed")
        return 0
    print(f"{args.params}: applied the best trial of {best}")
    for change in changes:
        print(f"  {change.line()}")
    return 0


REPRO_DEFAULT_TARGET = "register"  # the pipeline up to the registered model; tune is opt-in


def repro_argv(targets: list[str], extra: list[str]) -> list[str]:
    """The ``dvc repro`` command line: ``targets``, or ``register`` when none is given.

    ``extra`` (dvc's options) pass through; with ``-P``/``--all-pipelines`` no default target
    is added (dvc then reproduces every pipeline, tune included, as asked).
    """
    if not targets and not {"-P", "--all-pipelines"} & set(extra):
        targets = [REPRO_DEFAULT_TARGET]
    return [sys.executable, "-m", "dvc", "repro", *extra, *targets]


#: DVC's own closing line after a stage that failed (the stage printed its error already)
_DVC_STAGE_FAILED = re.compile(r"^ERROR: failed to reproduce '[^']*': failed to run: .*, exited with (-?\d+)$")


def _cmd_repro(args: argparse.Namespace, extra: list[str]) -> int:
    """``params.yaml`` is checked first (the one-line error and exit code 2, before DVC deletes
    any stage's outputs); then ``dvc repro``. When a stage fails with its one-line error,
    DVC's closing line about it is left out and the exit code is the stage's (2, 130), not
    DVC's 255."""
    from vireid.stages.entry import load_config

    load_config(repro_params(args.params))
    return run_dvc(repro_argv(list(args.targets), extra))


def repro_params(params: str, cwd: Path | None = None) -> Path:
    """The parameters file ``dvc repro`` will read: ``params``, except that the default
    ``params.yaml`` is looked for in the DVC project's root (the nearest folder up with a
    ``.dvc``) when run from a subfolder, as dvc does."""
    path = Path(params)
    here = (cwd or Path.cwd()).resolve()
    if params != "params.yaml" or (here / path).is_file():
        return path if cwd is None else here / path
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder / "params.yaml"
    return path


def run_dvc(argv: list[str]) -> int:
    """Run ``argv`` (a dvc command), its stderr passed through line by line; returns its exit
    code, or that of the stage that failed with an ``error: ...`` line."""
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, errors="replace")
    assert proc.stderr is not None
    stage_error = False
    stage_code = None
    for line in proc.stderr:
        failed = _DVC_STAGE_FAILED.match(line.rstrip("\n"))
        if failed and stage_error:
            stage_code = int(failed.group(1))
            continue
        stage_error = stage_error or line.startswith("error: ")
        sys.stderr.write(line)
        sys.stderr.flush()
    code = proc.wait()
    return stage_code if code and stage_code in (2, 130) else code


def _cmd_publish(args: argparse.Namespace, extra: list[str]) -> int:
    from vireid.stages.entry import load_config
    from vireid.tracking import git_commit, read_run_record, resolve_target
    from vireid.tracking.pipeline_state import collect_state, publish_state
    from vireid.tracking.runs import check_recorded_run

    root = Path.cwd()
    target = resolve_target(load_config(args.params).track, root)
    state = collect_state(root, params=args.params, run_file=args.run_file, registration=args.registration)
    run_id = check_recorded_run(read_run_record(args.run_file), args.run_file, target, root)
    manifest = publish_state(target.tracking_uri, run_id, state, git_commit=git_commit(root))
    print(f"published {', '.join(manifest['files'])} (stages {', '.join(state.stages)}) to MLflow run "
          f"{run_id} in {target.tracking_uri}, under pipeline/")
    print(f"a teammate gets them back with: vireid restore {run_id} --tracking-uri {target.tracking_uri}"
          " (then dvc pull)")
    return 0


def _cmd_restore(args: argparse.Namespace, extra: list[str]) -> int:
    from vireid.tracking.pipeline_state import restore_state
    from vireid.tracking.store import check_store_exists

    uri = _tracking_uri(args)
    check_store_exists(uri)  # restore only reads: never create a store where the URI points
    manifest, written = restore_state(uri, args.run_id, Path(args.dest), force=args.force)
    print(f"restored {', '.join(str(p) for p in written)} from MLflow run {args.run_id} in {uri}")
    commit = manifest.get("git_commit") or "unknown"
    print(f"the run's code is git commit {commit}; `dvc pull` now fetches the outputs dvc.lock "
          "records (model, shards) from the DVC remote")
    return 0


def _cmd_search(args: argparse.Namespace, extra: list[str]) -> int:
    from vireid import retrieval

    retrieval.check_device(args.device)
    queries = retrieval.query_paths(args.query)
    gallery = retrieval.list_images(args.gallery)
    model_file = [] if args.model.startswith(("models:/", "runs:/")) else [Path(args.model)]
    retrieval.check_output(args.out, [*queries, *gallery, *model_file], force=args.force)
    uri = _tracking_uri(args) if args.model.startswith(("models:/", "runs:/")) else ""
    if uri:  # search only reads: never create a store where the URI points
        from vireid.tracking.store import check_store_exists

        check_store_exists(uri)
    embed, size = retrieval.load_embed_fn(args.model, tracking_uri=uri, device=args.device)
    q_mod = MODALITY_CODES[args.query_modality]
    g_mod = MODALITY_CODES[args.gallery_modality] if args.gallery_modality else 1 - q_mod
    results = retrieval.search(embed, queries, gallery, image_size=size, query_modality=q_mod,
                            gallery_modality=g_mod, top_k=args.top_k, batch_size=args.batch_size,
                            device=args.device, on_skip=lambda msg: print(f"warning: {msg}", file=sys.stderr))
    for result in results:
        print(f"query {result.query}")
        for m in result.matches:
            print(f"  {m.rank:3d}  {m.similarity:+.4f}  {m.path}")
    picture = retrieval.save_picture(args.out, results)
    print(f"picture: {picture}")
    return 0


def _cmd_recipe(args: argparse.Namespace, extra: list[str]) -> int:
    from vireid.recipes import apply_recipe

    path, changes = apply_recipe(args.params, args.recipes, args.name)
    if not changes:
        print(f"{args.params}: already as {path}; nothing changed")
        return 0
    print(f"{args.params}: applied {path} ({len(changes)} change{'s' if len(changes) > 1 else ''})")
    for change in changes:
        print(f"  {change.line()}")
    return 0


def _cmd_mlflow_ui(args: argparse.Namespace, extra: list[str]) -> int:
    from vireid.tracking import server
    from vireid.tracking.store import local_store, prepare_store

    uri = _tracking_uri(args)
    prepare_store(uri)
    artifacts = local_store(Path.cwd())[1] if uri == local_store(Path.cwd())[0] else None
    cmd = server.server_command(uri, artifacts_destination=artifacts, host=args.host, port=args.port)
    print(f"MLflow UI on http://{args.host}:{args.port} (store {uri}); Ctrl-C stops it", flush=True)
    return server.serve(cmd, server.server_env(os.environ))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommand in ``command``)."""
    parser = argparse.ArgumentParser(prog="vireid", description="Pipeline stages, dvc repro, publish/restore of the pipeline state, image search and the MLflow UI.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="show the traceback of an expected error too (also: VIREID_DEBUG=1)")
    for stage in STAGES:
        p = sub.add_parser(stage, parents=[common], help=f"run the {stage} stage (vireid.stages.{stage}; other options go to the stage)")
        p.add_argument("--params", default="params.yaml", help="parameters file (default params.yaml)")
        if stage == "tune":
            p.add_argument("action", nargs="?", choices=["apply"],
                           help="apply: write the best trial's model.memory_size and loss.temperature "
                                "(outputs/tune/best_params.yaml, or --best FILE) into --params")
        p.set_defaults(func=_cmd_stage)
    p = sub.add_parser("repro", parents=[common],
                       help=f"dvc repro of the target stages (default {REPRO_DEFAULT_TARGET}; options go to dvc)")
    p.add_argument("targets", nargs="*", help=f"dvc stages to reproduce (default {REPRO_DEFAULT_TARGET}: "
                                              "the pipeline without the opt-in tune stage)")
    p.add_argument("--params", default="params.yaml",
                   help="parameters file checked before dvc runs (default params.yaml, the one dvc reads)")
    p.set_defaults(func=_cmd_repro)

    p = sub.add_parser("publish", parents=[common],
                       help="log dvc.lock, params.yaml, the metrics and registration.json to the "
                            "pipeline's MLflow run (after dvc repro; refused when dvc.lock is stale)")
    p.add_argument("--params", default="params.yaml", help="parameters file (default params.yaml)")
    p.add_argument("--run-file", default="outputs/train/mlflow_run.json",
                   help="the train stage's MLflow run record: the run to publish to")
    p.add_argument("--registration", default="outputs/register/registration.json",
                   help="the register stage's record")
    p.set_defaults(func=_cmd_publish)

    p = sub.add_parser("restore", parents=[common],
                       help="write the pipeline state published to an MLflow run into a checkout")
    p.add_argument("run_id", help="the MLflow run (vireid publish prints it)")
    p.add_argument("--dest", default=".", help="project folder to write into (default .)")
    p.add_argument("--force", action="store_true",
                   help="overwrite files with local changes (default: only files git has unchanged)")
    p.add_argument("--tracking-uri", default="", help="MLflow store of the run (default: from --params)")
    p.add_argument("--params", default="params.yaml", help="parameters file for track.tracking_uri")
    p.set_defaults(func=_cmd_restore)

    p = sub.add_parser("search", parents=[common], help="rank a gallery folder against query image(s)")
    p.add_argument("query", nargs="+", help="query image file(s) or folder(s)")
    p.add_argument("--gallery", required=True, help="folder of gallery images (searched recursively)")
    p.add_argument("--model", default="models:/vireid@champion",
                   help="model.pt file or MLflow model URI (default models:/vireid@champion)")
    p.add_argument("--query-modality", choices=sorted(MODALITY_CODES), default="infrared",
                   help="modality of the query images (default infrared)")
    p.add_argument("--gallery-modality", choices=sorted(MODALITY_CODES), default=None,
                   help="modality of the gallery images (default: the other one)")
    p.add_argument("--top-k", type=_positive, default=5, help="matches per query (default 5)")
    p.add_argument("--out", default="search.png",
                   help="picture of the results (default search.png; an existing file only with --force)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file (never an input)")
    p.add_argument("--batch-size", type=_positive, default=64, help="images per embedding batch")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--tracking-uri", default="", help="MLflow store of models:/ URIs (default: from --params)")
    p.add_argument("--params", default="params.yaml", help="parameters file for track.tracking_uri")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("recipe", parents=[common],
                       help="write a recipe's values (recipes/NAME.yaml) into params.yaml; prints what changed")
    p.add_argument("name", help="the recipe: sysu_agw, regdb_agw, cpu_demo (a file NAME.yaml in --recipes)")
    p.add_argument("--params", default="params.yaml", help="parameters file to change (default params.yaml)")
    p.add_argument("--recipes", default="recipes", help="folder of the recipes (default recipes)")
    p.set_defaults(func=_cmd_recipe)

    p = sub.add_parser("mlflow-ui", parents=[common], help="MLflow UI/server over the pipeline's store")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: local only)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument("--tracking-uri", default="", help="store to serve (default: from --params)")
    p.add_argument("--params", default="params.yaml", help="parameters file for track.tracking_uri")
    p.set_defaults(func=_cmd_mlflow_ui)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vireid`` script; returns the exit code.

    Expected errors (bad parameters, data, checkpoints, model URIs, paths) print one line
    ``error: <file or key>: <what> (<hint>)`` on stderr and return 2 (:mod:`vireid.errors`);
    ``--debug`` or ``VIREID_DEBUG=1`` shows their traceback.
    """
    from vireid.errors import debug_requested, run_entry

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in ("search", "mlflow-ui", "publish", "restore", "recipe") and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # stderr carries the error line only: no MLflow download progress bars
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # the stages start Ray: keep its workers in this environment (not a `uv run` runtime env)
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    code = 0

    def work(_: list[str]) -> None:
        nonlocal code
        code = int(args.func(args, extra) or 0)

    failed = run_entry(work, argv, debug=bool(args.debug) or debug_requested(extra))
    return failed or code


if __name__ == "__main__":
    sys.exit(main())
