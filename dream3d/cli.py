"""The ``dream3d`` command: fit, export, render, compare, prior, eval.

    dream3d fit prompt="a pineapple" [recipe=dreamfusion] [key=value ...]
    dream3d fit resume=outputs/dreamfusion/a-pineapple-20261126-101500

Errors in the input print one line naming the key and the expected form, and exit with status 2
before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dream3d import __version__

NOT_YET = {
    "export": "exporting GLB/OBJ/PLY meshes (the export issue)",
    "render": "turntable videos (the export issue)",
    "compare": "SDS-vs-VSD comparison reports (the VSD issue)",
    "eval": "quality evaluation against the shape world (the evaluation issue)",
}


def _fit_epilog() -> str:
    from dream3d.config import list_recipes, main_keys

    lines = ["recipes: " + ", ".join(list_recipes()), "", "main keys (key=value):"]
    lines += [f"  {k:<20} {d}" for k, d in main_keys()]
    lines += [
        "",
        "per-stage keys, e.g.: stages.coarse.steps=500  stages.coarse.guidance.guidance_scale=50",
        "  stages.coarse.camera.height=64  stages.coarse.renderer.num_samples=64",
        "  stages.coarse.loss.orient=[0,10,1000,5000]   (schedules: [start_step, start, end, end_step])",
        "resume an interrupted run:  dream3d fit resume=<run folder>",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dream3d", description="Text-to-3D by score distillation, on CPU or GPU.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dream3d {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{fit,export,render,compare,prior,eval}")
    fit = sub.add_parser(
        "fit", help="optimise a 3D object for a prompt", description="Optimise a 3D object for a text prompt.",
        epilog=_fit_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit.add_argument("overrides", nargs="*", metavar="key=value", help='e.g. prompt="a pineapple" recipe=dreamfusion seed=1')
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    prior = sub.add_parser(
        "prior", help="the shape world and the shipped prior", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The shape world behind the shipped prior.",
        epilog="examples:\n  dream3d prior world --list\n  dream3d prior world export name=snowman out=snowman.glb\n"
        "sampling and training the prior are not yet available (the shape-world prior issue)",
    )
    prior.add_argument("action", choices=["world"], help="world: list or export catalogue objects")
    prior.add_argument("args", nargs="*", metavar="key=value")
    prior.add_argument("--list", action="store_true", help="print the catalogue")
    for name, what in NOT_YET.items():
        p = sub.add_parser(name, help=f"{what}: not yet available")
        p.add_argument("args", nargs="*")
    return parser


def _error(msg: str, code: int = 2) -> int:
    print(f"dream3d: error: {msg}", file=sys.stderr)
    return code


def cmd_fit(args: argparse.Namespace) -> int:
    from dream3d.config import ConfigError, load_config, load_stored, parse_overrides

    try:
        overrides = parse_overrides(args.overrides)
        resume = overrides.pop("resume", None)
        if resume is not None:
            run_dir = Path(resume)
            stored = load_stored(run_dir / "config.yaml")
            cfg = load_config(overrides, base=stored)
        else:
            cfg = load_config(overrides)
            from dream3d.run import new_run_dir

            run_dir = new_run_dir(cfg)
    except (ConfigError, FileExistsError) as exc:
        return _error(str(exc))

    from dream3d.prior import PriorError
    from dream3d.run import RunInterrupted, fit

    print(f"dream3d: run folder {run_dir}", file=sys.stderr)
    try:
        if resume is not None:
            from dream3d.config import to_yaml
            from dream3d.io import write_text

            write_text(run_dir / "config.yaml", to_yaml(cfg))
        summary = fit(cfg, run_dir, show_progress=not args.quiet, resume=resume is not None)
    except RunInterrupted as exc:
        return _error(str(exc), 130)
    except (PriorError, RuntimeError) as exc:
        return _error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 1)
    for name, st in summary["stages"].items():
        print(f"stage {name}: {st.get('completed_steps')} steps, {st.get('wall_s')} s, {st.get('it_per_s')} it/s,"
              f" final loss {st.get('final', {}).get('loss', float('nan')):.4g}")
    print(f"done: {run_dir} (validation grids in stages/*/val/, summary.json)")
    return 0


def cmd_prior(args: argparse.Namespace) -> int:
    from dream3d.config import ConfigError, parse_overrides
    from dream3d.prior.shapeworld import export_glb, format_catalogue, get

    if args.list:
        print(format_catalogue())
        return 0
    try:
        kv = parse_overrides([a for a in args.args if a != "export"])
    except ConfigError as exc:
        return _error(str(exc))
    if "export" not in args.args or set(kv) - {"name", "out"} or "name" not in kv:
        return _error("prior world: expected --list, or export name=<object or caption> [out=<file.glb>]")
    try:
        obj = get(kv["name"])
    except KeyError as exc:
        return _error(str(exc.args[0]) if exc.args else str(exc))
    out = Path(kv.get("out", f"{obj.name}.glb"))
    if out.suffix.lower() != ".glb":
        return _error(f"out: expected a .glb file name, got '{out}'")
    export_glb(obj, out)
    print(f"wrote {out} ({obj.caption}: {len(obj.faces)} faces)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 2
    args, unknown = parser.parse_known_args(argv)  # key=value may follow --flags: collect them too
    if args.command == "fit":
        flags = [u for u in unknown if u.startswith("-")]
        if flags:
            return _error(f"fit: unknown option {flags[0]} (expected key=value overrides, --quiet or --help)")
        args.overrides = list(args.overrides) + unknown
        return cmd_fit(args)
    if args.command == "prior":
        return cmd_prior(args)
    return _error(f"'{args.command}' is not yet available: {NOT_YET[args.command]}")


if __name__ == "__main__":
    sys.exit(main())
