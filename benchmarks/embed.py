"""An export that carries its preprocessing, against `kiln predict` on the same image files.

Trains a small CIFAR-10 classifier on the image folder (or takes --run), exports it with
`--embed-preprocessing` (ONNX), and compares, on 256 test images given as their original PNG
files and as copies saved at other sizes (bicubic, PNG and JPEG), what `kiln predict` answers
(Pillow decode, resize, normalize, eager PyTorch) with what the README's plain onnxruntime script
answers (the decoded pixels straight into the graph): top-1 agreement and the largest difference
of any class probability.

    python benchmarks/embed.py [--run RUN] [--images 256] [--write-readme]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image
from readme_block import cpu_name, write_block

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# (height, width, format) of the copies: shrinking and enlarging, square and not, lossy
SIZES = ((32, 32, "png"), (64, 64, "png"), (24, 40, "png"), (113, 77, "jpeg"), (300, 400, "jpeg"))


def shared_cifar() -> Path:
    for base in (ROOT, *ROOT.parents):
        if (base / "shared" / "datasets" / "cifar10").is_dir():
            return base / "shared" / "datasets" / "cifar10"
    raise SystemExit("no shared/datasets/cifar10 next to or above the checkout")


def train(work: Path) -> Path:
    import kiln

    run = kiln.train(
        data__name="folder", data__root=str(shared_cifar()), data__subset=10_000,
        model__name="convnet", train__epochs=3, run__dir=str(work / "runs"),
        run__name="cifar", run__report=False, progress=False,
    )  # fmt: skip
    print(f"trained {run.path}: test accuracy {run.test_acc:.2%}", flush=True)
    return run.path


def readme_script() -> str:
    text = (ROOT / "README.md").read_text()
    return (
        text.split("<!-- embedded-onnx-script -->", 1)[1]
        .split("```python\n", 1)[1]
        .split("```", 1)[0]
    )


def copies(files: list[Path], folder: Path, height: int, width: int, fmt: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in files:
        with Image.open(path) as image:
            target = folder / f"{path.parent.name}-{path.stem}.{fmt}"
            image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC).save(
                target, quality=90
            )
            out.append(target)
    return out


def compare(run: Path, model: Path, files: list[Path], work: Path) -> dict:
    import kiln

    want = kiln.load(run).predict(files, top_k=10)  # the kiln predict path
    script = work / "predict.py"
    script.write_text(readme_script())
    out = subprocess.run(
        [sys.executable, "-I", str(script), str(model), *map(str, files)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    got = [line.split() for line in out.stdout.strip().splitlines()]
    embedded = kiln.load(model).predict(files, top_k=10)  # the same graph, all probabilities
    agree = np.mean([g[1] == w["label"] for g, w in zip(got, want, strict=True)])
    diffs = []
    for e, w in zip(embedded, want, strict=True):
        pe = {t["label"]: t["probability"] for t in e["top_k"]}
        pw = {t["label"]: t["probability"] for t in w["top_k"]}
        diffs.append(max(abs(pe[k] - pw[k]) for k in pw))
    script_diff = max(abs(float(g[2]) - w["probability"]) for g, w in zip(got, want, strict=True))
    return {"agree": agree, "max_diff": max(diffs + [script_diff]), "n": len(files)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained run (default: train one, about 3 epochs)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    from kiln.deploy.export import export_run

    work = Path(tempfile.mkdtemp(prefix="kiln-embed-"))
    run = Path(args.run) if args.run else train(work)
    model = export_run(run, "onnx", output=work / "export", embed_preprocessing=True).path
    test = sorted((shared_cifar() / "test").glob("*/*.png"))
    step = max(1, len(test) // args.images)
    files = test[::step][: args.images]
    lines = [
        f"`python benchmarks/embed.py --images {args.images}` on {cpu_name()}, "
        f"{date.today().isoformat()}: a convnet trained on 10,000 CIFAR-10 images for 3 epochs, "
        "exported with `--embed-preprocessing`; `kiln predict` against the README's onnxruntime "
        "script on the same files.",
        "",
        "| files | resize | images | top-1 agreement | largest probability difference |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for height, width, fmt in SIZES:
        batch = files if (height, width) == (32, 32) else copies(
            files, work / f"{height}x{width}", height, width, fmt)  # fmt: skip
        r = compare(run, model, batch, work)
        what = f"{fmt.upper()} at {height}x{width}" if batch is not files else "original PNGs"
        resize = "none (exact)" if (height, width) == (32, 32) else "cover + crop in the graph"
        lines.append(f"| {what} | {resize} | {r['n']} | {r['agree']:.2%} | {r['max_diff']:.1e} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.write_readme:
        write_block("embed", table)
    print(json.dumps({"work": str(work)}))


if __name__ == "__main__":
    main()
