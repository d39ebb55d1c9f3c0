"""Volumes shaped like the 3-D U-Net tutorials' brain-tumour data (BraTS: four MRI channels, four
classes), made up, so that the recipe runs anywhere: each 32^3 volume holds one tumour, an
enhancing rim (class 3) around a necrotic core (class 1), inside oedema (class 2), in a noisy
"brain"; the four channels see the regions with different contrasts, as FLAIR, T1, T1ce and T2
do, so that no one channel tells every class apart.

    python recipes/tutorials/make_tumours.py data/tumours       # 120 train + 30 test volumes
    kiln train recipes/tutorials/unet3d-tutorial.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CLASSES = ["background", "necrotic core", "oedema", "enhancing rim"]
# Brightness of each class (rows: background, core, oedema, rim) in each channel (columns:
# FLAIR, T1, T1ce, T2).
CONTRAST = np.array(
    [
        [0.30, 0.50, 0.30, 0.30],
        [0.55, 0.15, 0.20, 0.80],
        [0.80, 0.40, 0.30, 0.70],
        [0.60, 0.45, 0.95, 0.60],
    ],
    np.float32,
)


def tumour(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (4, D, H, W) float32 volume and its (D, H, W) uint8 mask."""
    z, y, x = np.ogrid[:size, :size, :size]
    centre = rng.uniform(0.35 * size, 0.65 * size, size=3)
    axes = rng.uniform(0.8, 1.25, size=3)  # an ellipsoid, not a ball
    r = np.sqrt(((z - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2
                + ((x - centre[2]) / axes[2]) ** 2)  # fmt: skip
    core, rim, oedema = (
        rng.uniform(a, b) * size for a, b in ((0.06, 0.1), (0.12, 0.17), (0.2, 0.3))
    )
    mask = np.zeros((size, size, size), np.uint8)
    mask[r <= oedema] = 2
    mask[r <= rim] = 3
    mask[r <= core] = 1
    volume = CONTRAST[mask].transpose(3, 0, 1, 2).copy()  # (4, D, H, W)
    volume += rng.normal(0.0, 0.08, volume.shape).astype(np.float32)
    return volume, mask


def make(out: Path, train: int = 120, test: int = 30, size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("test", test)):
        for sub in ("images", "masks"):
            (out / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            volume, mask = tumour(size, rng)
            np.save(out / split / "images" / f"{i:05d}.npy", volume)
            np.save(out / split / "masks" / f"{i:05d}.npy", mask)
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("data/tumours"))
    parser.add_argument("--train", type=int, default=120)
    parser.add_argument("--test", type=int, default=30)
    args = parser.parse_args()
    print(f"wrote {make(args.out, args.train, args.test)}")


if __name__ == "__main__":
    main()
