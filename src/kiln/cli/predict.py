"""`kiln predict` (classes, values or masks for files) and `kiln sample` (new images from a VAE
or GAN run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kiln.errors import KilnError

EPILOG_SAMPLE = """examples:
  kiln sample runs/mnist-vae --n 64 -o grid.png        one 8x8 grid
  kiln sample runs/mnist-gan --n 100 -o samples/       samples/sample_000.png ... sample_099.png
  kiln sample runs/mnist-gan --seed 3 --checkpoint last"""


def cmd_predict(ns: argparse.Namespace) -> int:
    import kiln
    from kiln.predict import expand_paths

    target = Path(ns.run)
    if (target / "config.yaml").is_file() and run_task(target) == "segment":
        return cmd_predict_masks(ns)
    if ns.output or ns.overlay:
        raise KilnError("-o/--output and --overlay write masks: they are for segmentation runs "
                        "(task=segment)")  # fmt: skip
    if target.is_file() or (target.is_dir() and not (target / "config.yaml").exists()):
        from kiln.deploy.runtime import load_servable  # an export: its own runtime answers

        predictor = load_servable(target)
    else:
        predictor = kiln.load(ns.run, ns.checkpoint)
    files = expand_paths(ns.paths)
    results = []
    if predictor.info.features:  # a table run: CSV files of rows
        for table in files:
            results += predictor.predict_table(table, top_k=ns.top_k)
    else:
        for begin in range(0, len(files), 256):
            results += predictor.predict(files[begin : begin + 256], top_k=ns.top_k)
    if ns.json:
        print(json.dumps(results))
        return 0
    for r in results:
        if "values" in r:  # task=regress
            shown = "  ".join(f"{name} {value:.4g}" for name, value in r["values"].items())
            if "line" in r:
                shown = f"line {r['line']}: {shown}"
        else:
            shown = "  ".join(f"{t['label']} {t['probability']:.1%}" for t in r["top_k"])
        print(f"{r['file']}: {shown}")
    return 0


def run_task(run_dir: Path) -> str:
    from kiln.rundir import RunDir

    return RunDir.open(run_dir).load_config().task


def cmd_predict_masks(ns: argparse.Namespace) -> int:
    """`kiln predict` of a segmentation run: a mask of class indices per image, in a folder."""
    from kiln.predict_masks import MaskPredictor, expand_inputs

    predictor = MaskPredictor.from_run(ns.run, ns.checkpoint)
    files = expand_inputs(ns.paths, volumes=predictor.info.depth is not None)
    out = Path(ns.output) if ns.output else Path(ns.run) / "predictions"
    results = predictor.write(files, out, with_overlay=ns.overlay)
    if ns.json:
        print(json.dumps(results))
        return 0
    for r in results:
        shares = ", ".join(f"{name} {share:.1%}" for name, share in list(r["classes"].items())[:4])
        print(f"{r['file']} -> {r['mask']}  ({shares})")
    return 0


def cmd_sample(ns: argparse.Namespace) -> int:
    from kiln.sample import check_output, is_folder, sample_images, write_samples

    check_output(ns.output)  # before loading anything
    paths = write_samples(sample_images(ns.run, ns.n, ns.seed, ns.checkpoint), ns.output)
    if is_folder(ns.output):
        print(f"wrote {len(paths)} images to {paths[0].parent}")
    else:
        print(f"wrote a grid of {ns.n} images to {paths[0]}")
    return 0


def add_parsers(verbs) -> None:
    p = verbs.add_parser("predict", help="classify image files or folders with a trained run")
    p.add_argument("run", metavar="RUN_DIR|EXPORT")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("-o", "--output", help="segment runs: folder for the masks (RUN/predictions)")
    p.add_argument("--overlay", action="store_true", help="segment runs: NAME.overlay.png too")
    p.set_defaults(func=cmd_predict)

    p = verbs.add_parser(
        "sample",
        help="new images from a trained VAE or GAN run",
        description="Draw new images from a task=vae or task=gan run: a grid, or one PNG each.",
        epilog=EPILOG_SAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--n", type=int, default=64, help="how many images (default 64)")
    p.add_argument("-o", "--output", default="grid.png", help="a .png grid, or a FOLDER/")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same images")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.set_defaults(func=cmd_sample)
