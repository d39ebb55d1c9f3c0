"""Generative recipes on MNIST: the VAE's test ELBO and the GAN's Fréchet distance per epoch.

    python benchmarks/generate.py --data-root ../shared/datasets --write-readme
    python benchmarks/generate.py --gan-subset 20000 --gan-epochs 8 --cores 1   # a busy 2-core CPU

Trains recipes/mnist-fast.yaml (the classifier whose features score the GAN), recipes/mnist-vae.yaml
and recipes/mnist-gan.yaml, each as a `kiln train` process, and reads the figures from the runs:
eval-test.json (test ELBO, Fréchet distance) and metrics.csv (val_frechet per epoch). As a floor
for the Fréchet distance it also scores real against real: the validation split against as many
test images, in the same classifier's features. `--keep DIR` keeps the run directories (reports,
sample grids) instead of a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

from readme_block import cpu_name, run_kiln, write_block

REPO = Path(__file__).resolve().parents[1]


def real_vs_real(classifier: Path, data_root: Path) -> float:
    """The Fréchet distance between the validation split and as many test images: what two
    samples of real digits score, the floor a generator can approach."""
    import torch

    from kiln import data as kdata
    from kiln.config import build_config
    from kiln.tasks.generate.frechet import distance_from_sums, feature_sums, load_classifier

    cfg = build_config(REPO / "recipes" / "mnist-gan.yaml", {"data.root": str(data_root)})
    bundle = kdata.build(cfg.data)
    info = bundle.info
    features = load_classifier(classifier, info.input_shape, info.name, "cpu")
    n = min(len(bundle.val), len(bundle.test))
    sums = []
    for split in (bundle.val, bundle.test):
        total = 0
        for begin in range(0, n, 1000):
            pixels = split.images[begin : min(begin + 1000, n)].float() / 255
            total = total + feature_sums(features(pixels))
        sums.append(total)
    with torch.no_grad():
        return distance_from_sums(sums[0], sums[1], n)


def read_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--vae-epochs", type=int, help="default: the recipe's")
    parser.add_argument("--vae-subset", type=int, help="training images for the VAE (data.subset)")
    parser.add_argument("--gan-epochs", type=int, help="default: the recipe's")
    parser.add_argument("--gan-subset", type=int, help="training images for the GAN (data.subset)")
    parser.add_argument("--cores", type=int, help="pin each kiln process to this many cores")
    parser.add_argument("--keep", type=Path, help="keep the run directories here")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    root = f"data.root={args.data_root.resolve()}"
    with tempfile.TemporaryDirectory(prefix="kiln-generate-") as tmp:
        work = (args.keep or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        runs = f"run.dir={work}"
        cpus = ",".join(map(str, range(args.cores))) if args.cores else None  # the first cores
        run = lambda *a: run_kiln(*a, cwd=work, cpus=cpus)  # noqa: E731
        clf_s = run("train", REPO / "recipes" / "mnist-fast.yaml", "name=mnist-classifier",
                    root, runs)  # fmt: skip
        clf = json.loads((work / "mnist-classifier" / "eval-test.json").read_text())
        vae_extra = [f"epochs={args.vae_epochs}"] if args.vae_epochs else []
        vae_extra += [f"data.subset={args.vae_subset}"] if args.vae_subset else []
        vae_s = run("train", REPO / "recipes" / "mnist-vae.yaml", root, runs, *vae_extra)
        vae = json.loads((work / "mnist-vae" / "eval-test.json").read_text())
        vae_rows = read_rows(work / "mnist-vae")
        vae_info = json.loads((work / "mnist-vae" / "info.json").read_text())
        gan_extra = [f"epochs={args.gan_epochs}"] if args.gan_epochs else []
        gan_extra += [f"data.subset={args.gan_subset}"] if args.gan_subset else []
        classifier = f"gan.frechet_classifier={work / 'mnist-classifier'}"
        gan_s = run("train", REPO / "recipes" / "mnist-gan.yaml", root, runs, classifier,
                    *gan_extra)  # fmt: skip
        gan = json.loads((work / "mnist-gan" / "eval-test.json").read_text())
        gan_rows = read_rows(work / "mnist-gan")
        gan_info = json.loads((work / "mnist-gan" / "info.json").read_text())
        floor = real_vs_real(work / "mnist-classifier", args.data_root.resolve())

    command = "python benchmarks/generate.py " + " ".join(sys.argv[1:])
    lines = [
        f"Measured with `{command}` on {cpu_name()}. Time: the whole `kiln train` process.",
        "",
        f"Classifier for the Fréchet features: recipes/mnist-fast.yaml, test accuracy "
        f"{clf['accuracy']:.2%}, {clf_s:.0f} s.",
        "",
        f"**VAE** (recipes/mnist-vae.yaml, {len(vae_rows)} epochs on "
        f"{vae_info['samples']['train']:,} training images, {vae_s:.0f} s): on the "
        f"{vae['samples']:,} test images, ELBO **{vae['elbo']:.2f}** nats per image = "
        f"-(reconstruction {vae['recon']:.2f} + KL {vae['kl']:.2f}).",
        "",
        f"**GAN** (recipes/mnist-gan.yaml, {len(gan_rows)} epochs on "
        f"{gan_info['samples']['train']:,} training images, {gan_s:.0f} s): Fréchet distance in "
        "the classifier's features (lower is better; not FID), the validation split against as "
        "many samples of a fixed seed, per epoch:",
        "",
        "| epoch | " + " | ".join(r["epoch"] for r in gan_rows) + " |",
        "|---|" + "---:|" * len(gan_rows),
        "| val Fréchet | " + " | ".join(f"{float(r['val_frechet']):.2f}" for r in gan_rows) + " |",
        "",
        f"Test split ({gan['samples']:,} images, best checkpoint): {gan['frechet']:.2f}. "
        f"Real against real (validation against as many test images): {floor:.2f}.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        write_block("generate", text)


if __name__ == "__main__":
    main()
