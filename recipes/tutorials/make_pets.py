"""The custom-dataset tutorial's four images: two cats and two dogs, and a label.csv with a header
and `img,label` columns (0 cat, 1 dog), made from any image folder with `cat/` and `dog/` class
folders (e.g. the CIFAR-10 PNG folder's train/):

    python recipes/tutorials/make_pets.py ../shared/datasets/cifar10/train data/pets
    kiln train recipes/tutorials/pets-tutorial.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def make_pets(source: Path, out: Path, per_class: int = 2) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    rows = ["img,label"]
    for label, name in enumerate(("cat", "dog")):
        folder = source / name
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in SUFFIXES)
        if len(files) < per_class:
            raise SystemExit(f"{folder} holds {len(files)} images; {per_class} are needed")
        for i, path in enumerate(files[:per_class], start=1):
            with Image.open(path) as image:
                image.convert("RGB").save(out / f"{name}{i}.png")
            rows.append(f"{name}{i}.png,{label}")
    (out / "label.csv").write_text("\n".join(rows) + "\n")
    return out / "label.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a folder with cat/ and dog/ image folders")
    parser.add_argument("out", type=Path, nargs="?", default=Path("data/pets"))
    args = parser.parse_args()
    print(f"wrote {make_pets(args.source, args.out)}")


if __name__ == "__main__":
    main()
