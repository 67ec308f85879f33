"""The ``dream3d`` command: fit, export, render, compare, prior, eval, batch.

    dream3d fit prompt="a pineapple" [recipe=mvdream] [key=value ...]
    dream3d fit resume=outputs/mvdream/a-pineapple-20261126-101500

Errors in the input print one line naming the key and the expected form, and exit with status 2
before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dream3d import __version__
from dream3d.errors import fault_point, signal_exit_code


def _fit_epilog() -> str:
    from dream3d.config import list_recipes, main_keys

    lines = ["recipes: " + ", ".join(list_recipes()) + " (configs/), or recipe=<your recipe>.yaml", "",
             "main keys (key=value; text keys such as prompt and name are taken literally):"]
    lines += [f"  {k:<20} {d}" for k, d in main_keys()]
    lines += [
        "",
        "per-stage keys, e.g.: stages.coarse.steps=500  stages.coarse.guidance.guidance_scale=50",
        "  stages.coarse.camera.height=64  stages.coarse.renderer.num_samples=64",
        "  stages.coarse.loss.orient=[0,10,1000,5000]   (schedules: [start_step, start, end, end_step])",
        "resume an interrupted run:  dream3d fit resume=<run folder>",
    ]
    return "\n".join(lines)


def run_folder_command(sub, name: str, help: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """A subcommand that works on a run folder: ``dream3d <name> <run> [key=value ...]``."""
    parser = sub.add_parser(name, help=help, description=description, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run folder (outputs/<recipe>/<name>)")
    parser.add_argument("args", nargs="*", metavar="key=value")
    return parser


def build_parser() -> argparse.ArgumentParser:
    from dream3d.config import list_recipes

    parser = argparse.ArgumentParser(
        prog="dream3d", description="Text-to-3D by score distillation, on CPU or GPU.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dream3d {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{fit,export,render,compare,prior,eval,batch}")
    fit = sub.add_parser(
        "fit", help="optimise a 3D object for a prompt", description="Optimise a 3D object for a text prompt.",
        epilog=_fit_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit.add_argument("overrides", nargs="*", metavar="key=value", help='e.g. prompt="a pineapple" recipe=magic3d seed=1')
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    prior = sub.add_parser(
        "prior", help="the shape world and the shipped prior", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The shape world behind the shipped prior.",
        epilog="examples:\n  dream3d prior world --list\n  dream3d prior world export name=snowman out=snowman.glb\n"
        '  dream3d prior sample prompt="a red cube" [n=4] [steps=20] [guidance=7.5] [sampler=dpm-solver++|ddim|ddpm]\n'
        "      [seed=0] [prior=assets/priors/shapeworld] [out=samples.png]\n"
        "      [azimuth=0 elevation=15: the camera, for a camera-conditioned prior such as assets/priors/shapeworld-camera]\n"
        "train the shipped prior with: python scripts/train_shapeworld_prior.py --preset full",
    )
    prior.add_argument("action", choices=["world", "sample"], help="world: list or export objects; sample: image grid")
    prior.add_argument("args", nargs="*", metavar="key=value")
    prior.add_argument("--list", action="store_true", help="print the catalogue")
    run_folder_command(
        sub, "export", "bake a run's result into a textured mesh (GLB, OBJ/MTL/PNG, PLY)",
        "Bake the last trained stage of a run into <run>/export/model.<format>.",
        "keys: format=glb[,obj,ply]  threshold=<density, default automatic>  resolution=128  texture_size=1024\n"
        "      max_faces=<decimate to at most this many faces>  stage=<stage name>\n"
        "meshes are Y-up with the object's front facing +Z.",
    )
    run_folder_command(
        sub, "render", "turntable video of a run's exported mesh (MP4 + GIF)",
        "Render <run>/export/model.glb (exported first if missing) on a turntable: "
        "<run>/export/turntable[-<mode>].mp4 and .gif.",
        "keys: views=120  fps=30  elevation=15  size=512  mode=rgb|normal|depth|all|volume  format=mp4,gif\n"
        "      stage=<stage name> (mode=volume renders the last NeRF stage itself instead of the mesh)",
    )
    run_folder_command(
        sub, "eval", "score a run's mesh against the shape world (classifier R-precision, IoU, Janus)",
        "Evaluate <run>/export/model.glb (exported first if missing) for the run's prompt: the evaluation "
        "classifier's\nR-precision, object and colour accuracy over turntable views, silhouette IoU and colour "
        "error against the\ntrue catalogue object, and for objects with a front the view accuracy and the "
        "multi-face (Janus) score.\nWrites <run>/eval.json.",
        "keys: views=16  elevation=15  size=64  classifier=<folder> (default: <prior>/classifier, else "
        "assets/priors/shapeworld/classifier)",
    )
    compare = sub.add_parser(
        "compare", help="two recipes (default SDS against VSD) on one prompt: two fits, one HTML report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fit a prompt with two recipes (recipes=<a>,<b>; default dreamfusion,prolificdreamer: SDS at "
        "guidance scale 100\nagainst VSD at 7.5) from the same seed and step budget, or take two existing run "
        "folders, and write\n<out>/report.html (turntables, validation grids, loss curves, figures) and "
        "<out>/summary.json.\nOnly the first stage of each recipe is fitted, with budget steps (a NeRF; fantasia3d: "
        "its DMTet geometry),\nso the two runs differ in that stage's method alone. They go into <out>/<recipe>, "
        "labelled by recipe and\nguidance; the SDS-vs-VSD pair keeps <out>/sds and <out>/vsd, labelled by guidance.",
        epilog='examples:\n  dream3d compare prompt="a red cube" [seed=0] [budget=600] [particles=2] [out=<folder>]\n'
        '  dream3d compare prompt="a red cube" recipes=magic3d,mvdream\n'
        "  dream3d compare outputs/dreamfusion/<run> outputs/prolificdreamer/<run> [out=<folder>]\n"
        f"keys: recipes=<a>,<b> from {', '.join(list_recipes())}\n"
        "      prior=<folder> (default: each recipe's own)  views=16 (eval)  video_views=60  video_size=256\n"
        "      texture_size=512  mesh_resolution=128\n"
        "the same command with out=<folder> continues an interrupted comparison.",
    )
    compare.add_argument("args", nargs="*", metavar="run folder | key=value")
    compare.add_argument("--quiet", action="store_true", help="no progress bars")
    batch = sub.add_parser(
        "batch", help="many prompts x seeds on Ray (this machine or a cluster), with a gallery",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fit, export and evaluate every prompt of a file (one a line; overrides after a tab) for each "
        "seed,\non a local Ray runtime or an existing Ray cluster. Writes <out>/runs/<recipe>/<prompt>-s<seed>/, "
        "<out>/summary.json,\n<out>/summary.csv and <out>/gallery.html. The same command again skips finished fits "
        "and resumes the rest.",
        epilog="keys: prompts=<file>  seeds=1  recipe=<recipe>  out=outputs/batch/<file stem>\n"
        "      workers=<fits at once; default cores/threads, or one per GPU>  threads=1 (torch threads per fit)\n"
        "      retries=2 (after a worker dies)  gpus=1 (GPUs per fit; 0.5 puts two on a GPU)  views=16 (eval)\n"
        "      address=<Ray cluster, e.g. auto>  any fit key=value for every prompt, e.g. stages.coarse.steps=300\n"
        "examples:\n  dream3d batch prompts=prompts.txt seeds=2\n"
        "  ray start --head   # then on the other machines: ray start --address=<head>:6379\n"
        "  dream3d batch prompts=prompts.txt address=auto out=/shared/batch\n"
        "needs Ray: pip install 'dream3d[batch]'",
    )
    batch.add_argument("args", nargs="*", metavar="key=value")
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _error(msg: str, code: int = 2) -> int:
    print(f"dream3d: error: {msg}", file=sys.stderr)
    return code


def cmd_fit(args: argparse.Namespace) -> int:
    from dream3d.config import ConfigError, load_config, load_stored, parse_overrides, stored_config_error
    from dream3d.rundir import RunFolder

    try:
        fault_point("startup")
        overrides = parse_overrides(args.overrides)
        resume = overrides.pop("resume", None)
        if resume is not None:
            folder = RunFolder(resume).require()
            run_dir = folder.path
            stored = load_stored(folder.config_path)
            try:
                cfg = load_config(overrides, base=stored)
            except ConfigError as exc:
                if "command line" in str(exc):
                    raise
                raise stored_config_error(folder.config_path, exc) from None
        else:
            cfg = load_config(overrides)
            from dream3d.rundir import new_run_dir

            run_dir = new_run_dir(cfg)
    except FileExistsError as exc:
        return _error(str(exc))
    except KeyboardInterrupt as exc:
        return _error(f"{_signal_name(exc)} before the run folder was made; nothing was written",
                      signal_exit_code(exc))

    from dream3d.run import fit

    print(f"dream3d: run folder {run_dir}", file=sys.stderr)
    try:
        summary = fit(cfg, run_dir, show_progress=not args.quiet, resume=resume is not None)
    except KeyboardInterrupt as exc:
        if RunFolder(run_dir).config_path.is_file():
            return _error(f"{_signal_name(exc)}; continue with: dream3d fit resume={run_dir}", signal_exit_code(exc))
        return _error(f"{_signal_name(exc)} before the run folder was made; nothing was written",
                      signal_exit_code(exc))
    for name, st in summary["stages"].items():
        line = f"stage {name}: {st.get('completed_steps')} steps, {st.get('wall_s')} s"
        if st.get("run_steps") is not None and st.get("run_steps") != st.get("completed_steps"):
            line += f" in all (this run: {st['run_steps']} steps in {st.get('run_wall_s')} s, {st.get('it_per_s')} it/s)"
        elif st.get("run_steps"):
            line += f", {st.get('it_per_s')} it/s"
        print(line + f", final loss {st.get('final', {}).get('loss', float('nan')):.4g}")
    print(f"done: {run_dir} (validation grids in stages/*/val/, summary.json)")
    return 0


def _signal_name(exc: BaseException) -> str:
    from dream3d.errors import Terminated

    return "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"


def export_shape_glb(obj, path: str | Path) -> Path:
    """Write a shape-world object (:class:`dream3d.shapeworld.ShapeObject`) as a binary glTF with vertex colours
    and a matte material (atomically). Returns the path."""
    from dream3d.export.mesh import write_glb
    from dream3d.representations.mesh import TexturedMesh

    return write_glb(TexturedMesh(obj.verts, obj.faces, vertex_colors=obj.colors.clamp(0.0, 1.0)), path)


def cmd_prior(args: argparse.Namespace) -> int:
    from dream3d.config import ConfigError, parse_overrides
    from dream3d.shapeworld import format_catalogue, get

    try:
        kv = parse_overrides([a for a in args.args if a != "export"])
    except ConfigError as exc:
        return _error(str(exc))
    if args.action == "sample":
        return cmd_prior_sample(kv)
    if args.list:
        print(format_catalogue())
        return 0
    if "export" not in args.args or set(kv) - {"name", "out"} or "name" not in kv:
        return _error("prior world: expected --list, or export name=<object or caption> [out=<file.glb>]")
    try:
        obj = get(kv["name"])
    except KeyError as exc:
        return _error(str(exc.args[0]) if exc.args else str(exc))
    out = Path(kv.get("out", f"{obj.name}.glb"))
    if out.suffix.lower() != ".glb":
        return _error(f"out: expected a .glb file name, got '{out}'")
    export_shape_glb(obj, out)
    print(f"wrote {out} ({obj.caption}: {len(obj.faces)} faces)")
    return 0


def cmd_prior_sample(kv: dict[str, str]) -> int:
    """``dream3d prior sample prompt=... [n=4] [steps=20] [guidance=7.5] [sampler=dpm-solver++]``: a PNG grid."""
    import time

    from dream3d.config import DEFAULT_PRIOR, ConfigError, resolve_prior_path, typed_values

    defaults = {"prompt": "", "n": 4, "steps": 20, "guidance": 7.5, "sampler": "dpm-solver++", "seed": 0,
                "prior": DEFAULT_PRIOR, "out": "samples.png", "negative_prompt": "", "azimuth": None, "elevation": None}
    try:
        values = typed_values(kv, defaults, "prior sample")
    except ConfigError as exc:
        return _error(str(exc))
    if not str(values.get("prompt", "")).strip():
        return _error('prompt: expected a non-empty text, e.g. prompt="a red cube"')
    if values["n"] < 1 or values["steps"] < 1:
        return _error(f"n and steps: expected positive integers, got n={values['n']}, steps={values['steps']}")
    if values["sampler"] not in ("dpm-solver++", "ddim", "ddpm"):
        return _error(f"sampler: expected one of dpm-solver++, ddim, ddpm, got '{values['sampler']}'")
    if not str(values["out"]).lower().endswith(".png"):
        return _error(f"out: expected a .png file name, got '{values['out']}'")
    try:
        prior_path = resolve_prior_path(values["prior"])
    except ConfigError as exc:
        return _error(str(exc))
    from dream3d.prior import PriorError, load_prior
    from dream3d.prior.sample import sample, save_grid

    try:
        prior = load_prior(prior_path)
    except PriorError as exc:
        return _error(str(exc), 1)
    c2w = None
    if values["azimuth"] is not None or values["elevation"] is not None:
        if not prior.takes_camera:
            return _error(f"azimuth/elevation: the prior {prior_path} takes no camera (a camera-conditioned prior "
                          "does, e.g. prior=assets/priors/shapeworld-camera)")
        import torch

        from dream3d.cameras import make_cameras

        angle = lambda key, default: torch.tensor([values[key] if values[key] is not None else default])  # noqa: E731
        c2w = make_cameras(angle("elevation", 15.0), angle("azimuth", 0.0), torch.ones(1), torch.tensor([55.0]),
                           prior.image_size, prior.image_size).c2w[0]
    start = time.perf_counter()
    images = sample(prior, values["prompt"], values["n"], values["steps"], values["guidance"], values["sampler"],
                    values["seed"], values["negative_prompt"], c2w=c2w)
    elapsed = time.perf_counter() - start
    path = save_grid(images, values["out"])
    print(f"wrote {path}: {values['n']} samples of '{values['prompt']}' in {elapsed:.2f} s"
          f" ({elapsed / values['n']:.2f} s per image, {values['steps']} {values['sampler']} steps)")
    return 0


def cmd_export(args: argparse.Namespace, render: bool) -> int:
    """``dream3d export <run> [format=glb,obj,ply] ...`` and ``dream3d render <run> [views=120] ...``."""
    from dream3d.config import ConfigError, parse_overrides, typed_values
    from dream3d.export.run import ExportError, export_run, render_run

    try:
        kv = parse_overrides(args.args)
        if render:
            v = typed_values(kv, {"views": 120, "fps": 30.0, "elevation": 15.0, "size": 512, "mode": "rgb",
                                  "format": "mp4,gif", "stage": ""}, "render")
            render_run(args.run, v["views"], v["fps"], v["elevation"], v["size"], v["mode"], v["format"],
                       v["stage"] or None)
        else:
            v = typed_values(kv, {"format": "glb", "threshold": None, "resolution": 128, "texture_size": 1024,
                                  "max_faces": 0, "stage": ""}, "export")
            export_run(args.run, v["format"], v["threshold"], v["resolution"], v["texture_size"],
                       v["max_faces"] or None, v["stage"] or None)
    except (ConfigError, ExportError) as exc:
        return _error(str(exc))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``dream3d eval <run> [views=16] [elevation=15] [size=64] [classifier=<folder>]``: table + eval.json."""
    from dream3d.config import ConfigError, parse_overrides, typed_values
    from dream3d.eval import EvalError, evaluate_run, format_table
    from dream3d.rundir import RunFolder

    try:
        v = typed_values(parse_overrides(args.args), {"views": 16, "elevation": 15.0, "size": 64, "classifier": ""},
                         "eval")
        result = evaluate_run(args.run, v["views"], v["classifier"] or None, v["elevation"], v["size"])
    except (ConfigError, EvalError) as exc:
        return _error(str(exc))
    print(format_table(result))
    run = RunFolder(args.run)
    pictures = f" and {run.eval_silhouettes_path.name}" if run.eval_silhouettes_path.is_file() else ""
    print(f"wrote {run.eval_path}{pictures} (classifier {result['classifier']}, {result['seconds']} s)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``dream3d compare prompt=... [recipes] [seed] [budget] [particles]`` or ``dream3d compare <run A> <run B>``."""
    from dream3d.compare.errors import CompareError, ReportError
    from dream3d.compare.job import compare, typed
    from dream3d.config import ConfigError, parse_overrides
    from dream3d.prior import PriorError
    from dream3d.run import RunInterrupted

    folders = [a for a in args.args if "=" not in a]
    try:
        values = typed(parse_overrides([a for a in args.args if "=" in a]))
        summary = compare(values, folders or None, show_progress=not args.quiet)
    except (CompareError, ConfigError, ReportError) as exc:
        return _error(str(exc))
    except PriorError as exc:
        return _error(str(exc), 1)
    except RunInterrupted as exc:
        return _error(f"{exc}; or rerun the same dream3d compare command with out=<its folder>", exc.exit_code)
    for label, fig in summary["runs"].items():
        print(f"{label}: " + ", ".join(f"{k} {fig.get(k)}" for k in ("wall_s", "it_per_s", "saturation",
                                                                     "true_saturation", "r_precision", "diversity")))
    print(f"wrote {Path(summary['out']) / summary['report']} and summary.json in {summary['compare_wall_s']} s")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    """``dream3d batch prompts=<file> ...``: exit 0 when every fit is done, 1 when any failed, 130 on Ctrl-C."""
    from dream3d.batch import run_batch
    from dream3d.batch.engine import BatchError, BatchInterrupted
    from dream3d.config import ConfigError

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        summary = run_batch(args.args, progress=not args.quiet, log=log)
    except ConfigError as exc:
        return _error(str(exc))
    except BatchError as exc:
        return _error(str(exc), exc.exit_code)
    except BatchInterrupted as exc:
        return _error(str(exc), exc.exit_code)
    counts = summary["counts"]
    for row in summary["rows"]:
        if row["status"] != "done":
            print(f"{row['status']}: {row['prompt']} / seed {row['seed']}: {row.get('error')}")
    out = Path(summary["out"])
    print(f"done {counts['done']}, failed {counts['failed']} of {len(summary['rows'])} fits; "
          f"{out / 'gallery.html'}, {out / 'summary.csv'}")
    return 0 if counts["done"] == len(summary["rows"]) else 1


def main(argv: list[str] | None = None) -> int:
    """The command line: every error a user can cause ends in one line (``dream3d: error: ...``) and a non-zero
    exit code: 2 bad input, 1 a failed run or a system error (disk full, permission), 130 Ctrl-C, 143 SIGTERM.
    ``DREAM3D_DEBUG=1`` shows the traceback of an unexpected error."""
    from dream3d.errors import Dream3DError, install_signal_handlers
    from dream3d.logs import quiet_libraries

    install_signal_handlers()
    quiet_libraries()
    try:
        return _main(argv)
    except Dream3DError as exc:
        return _error(str(exc), exc.exit_code)
    except KeyboardInterrupt as exc:
        return _error(_signal_name(exc), signal_exit_code(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _error(f"{where}{exc.strerror or exc}", 1)
    except Exception as exc:  # a bug: one line, the traceback on request
        if os.environ.get("DREAM3D_DEBUG"):
            raise
        text = str(exc).strip().splitlines()
        return _error(f"unexpected {type(exc).__name__}: {text[0] if text else ''} (DREAM3D_DEBUG=1 shows the "
                      "traceback)", 1)


def _main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 2
    args, unknown = parser.parse_known_args(argv)  # key=value may follow --flags: collect them too
    flags = [u for u in unknown if u.startswith("-")]
    if flags:
        return _error(f"{args.command}: unknown option {flags[0]} (expected key=value arguments; see dream3d "
                      f"{args.command} --help)")
    if args.command == "fit":
        args.overrides = list(args.overrides) + unknown
        return cmd_fit(args)
    if hasattr(args, "args"):
        args.args = list(args.args) + unknown
    if args.command == "prior":
        return cmd_prior(args)
    if args.command in ("export", "render"):
        return cmd_export(args, args.command == "render")
    if args.command == "eval":
        return cmd_eval(args)
    if args.command == "compare":
        return cmd_compare(args)
    if args.command == "batch":
        return cmd_batch(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
