"""`kiln predict` (classes, values or masks for files) and `kiln sample` (new images from a VAE
or GAN run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EPILOG_SAMPLE = """examples:
  kiln sample runs/mnist-vae -n 64 -o grid.png         one 8x8 grid
  kiln sample runs/mnist-gan -n 100 -o samples/        samples/sample_000.png ... sample_099.png
  kiln sample runs/mnist-gan --seed 3 --checkpoint last"""


def cmd_predict(ns: argparse.Namespace) -> int:
    """Answers for files: a run (its checkpoint) or an export (its own runtime) answers, as the
    run's task says (classes, values, masks written to a folder, ...)."""
    from kiln.infer import load_predictor

    predictor = load_predictor(ns.run, ns.checkpoint)
    task = predictor.task
    if ns.explain:
        return explain(ns, predictor)
    if predictor.info.features:  # a table run: CSV files of rows
        results = []
        for table in task.input_files(ns.paths, predictor.info):
            results += predictor.predict_table(table, top_k=ns.top_k)
    else:
        files = task.input_files(ns.paths, predictor.info)
        output = Path(ns.output) if ns.output else None
        results = task.predict_files(predictor, files, output, ns.overlay, ns.top_k)
    if ns.json:
        print(json.dumps(results))
        return 0
    for r in results:
        print(task.show_answer(r))
    return 0


def explain(ns: argparse.Namespace, predictor) -> int:
    """--explain: a heat map per top class of each file, written to -o (RUN/explanations)."""
    from kiln.infer.explain import explain_files, show

    files = predictor.task.input_files(ns.paths, predictor.info)
    folder = predictor.source if predictor.source.is_dir() else predictor.source.parent
    output = Path(ns.output) if ns.output else folder / "explanations"
    results = explain_files(predictor, files, output, ns.top_k, ns.explain)
    if ns.json:
        print(json.dumps(results))
        return 0
    if results:
        print(f"{results[0]['method']}: heat maps over each image in {output}")
    for r in results:
        print(show(r))
    return 0


def cmd_sample(ns: argparse.Namespace) -> int:
    from kiln.evaluate.images import check_output, is_folder, write_samples
    from kiln.infer import sample_images

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
    p.add_argument("-k", "--top-k", type=int, default=3, help="answers per image (3)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument(
        "-o", "--output", help="segment runs: folder for the masks (RUN/predictions); --explain: "
        "folder for the heat maps (RUN/explanations)",
    )  # fmt: skip
    p.add_argument("--overlay", action="store_true", help="segment runs: NAME.overlay.png too")
    p.add_argument(
        "--explain", nargs="?", const="auto", choices=["auto", "gradcam", "ig"], metavar="METHOD",
        help="why: a heat map over each image per top class, written to -o (default "
        "RUN/explanations); METHOD auto (Grad-CAM for convolutional models, else integrated "
        "gradients), gradcam or ig",
    )  # fmt: skip
    p.set_defaults(func=cmd_predict)

    p = verbs.add_parser(
        "sample",
        help="new images from a trained VAE or GAN run",
        description="Draw new images from a task=vae or task=gan run: a grid, or one PNG each.",
        epilog=EPILOG_SAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("-n", "--n", type=int, default=64, help="how many images (default 64)")
    p.add_argument("-o", "--output", default="grid.png", help="a .png grid, or a FOLDER/")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same images")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.set_defaults(func=cmd_sample)
