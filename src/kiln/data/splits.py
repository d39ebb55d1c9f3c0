"""Carving splits and samples out of a training set: fixed, stratified and never empty by accident.

The validation split (and, for a person's own images without a test split, the test split) is a
fixed fraction of the training set, and `data.subset` a fixed sample of it: each is shared among
the classes in proportion to their size (largest remainders) and drawn with a fixed seed, so it
never changes with train.seed and runs stay comparable. A fraction that rounds to no image on a
tiny dataset still holds out one (said in a note), as long as one is left to train on.
"""

from __future__ import annotations

import torch

from kiln.data.registry import are_masks, is_multi_hot
from kiln.errors import DataError

SPLIT_SEED = 0  # the validation split never changes with train.seed: runs stay comparable


def stratified_index(labels: torch.Tensor, count: int, fraction: float | None = None):
    """`count` sorted positions drawn with a fixed seed, shared among the classes in proportion
    to their size (`fraction` of each, by largest remainders); numeric targets (regress) or
    masks (segment) have no classes: a plain random draw; label sets (multilabel) are
    stratified by each image's set of labels."""
    g = torch.Generator().manual_seed(SPLIT_SEED)
    if is_multi_hot(labels):  # several labels per image: stratified by each image's set of labels
        labels = torch.unique(labels, dim=0, return_inverse=True)[1]
    if labels.is_floating_point() or are_masks(labels):
        return torch.randperm(len(labels), generator=g)[:count].sort().values
    fraction = count / max(len(labels), 1) if fraction is None else fraction
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * fraction
    quota = exact.floor().long()
    extra = count - int(quota.sum())
    quota[torch.argsort(exact - quota, descending=True, stable=True)[:extra]] += 1
    picked = []
    for c, n in zip(classes.tolist(), quota.tolist(), strict=True):
        members = (labels == c).nonzero().flatten()
        picked.append(members[torch.randperm(len(members), generator=g)[:n]])
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.long)


def split_at(split, held_index: torch.Tensor):
    """(the rest, the held-out positions) of a split."""
    keep = torch.ones(len(split), dtype=torch.bool)
    keep[held_index] = False
    return split.take(keep.nonzero().flatten()), split.take(held_index)


def stratified_split(train, fraction: float, count: int | None = None):
    """A fixed, stratified split of a training set into (rest, held out): round(N x fraction)
    images held out (or `count`), each class's drawn at random with a fixed seed."""
    count = round(len(train) * fraction) if count is None else count
    return split_at(train, stratified_index(train.labels, count, fraction))


def hold_out(train, fraction: float, what: str, key: str):
    """(rest, held out, note): `fraction` of the training set held out for `what` (validation,
    testing), at least one image while one is left to train on; the note (or None) says when
    that rounded up."""
    n = len(train)
    count = round(n * fraction)
    if count > 0 or fraction == 0:
        return (*stratified_split(train, fraction, count), None)
    if n < 2:
        none = train.take(torch.zeros(0, dtype=torch.long))
        return train, none, f"warning: {n} training image(s) leave none for {what} ({key})"
    rest, held = stratified_split(train, fraction, 1)
    note = (
        f"warning: {key}={fraction} of {n} images is less than one image: 1 image taken from "
        f"training for {what} (stratified); {n - 1} left to train on"
    )
    return rest, held, note


def carve_test(train, fraction: float):
    """The test split of a dataset given without one: (rest, test, note)."""
    if len(train) < 2:
        raise DataError(
            f"only {len(train)} training image(s): Kiln needs at least 2, one to train on and "
            "one to test on (or give a test split)"
        )
    return hold_out(train, fraction, "testing", "data.test_fraction")


def sample(split, n: int | None):
    """A fixed, stratified random sample of n images (data.subset), or the split when n is None
    or not smaller."""
    if n is None or n >= len(split):
        return split
    return split.take(stratified_index(split.labels, n))


def capped(split, most: int) -> tuple[torch.Tensor, object]:
    """(index into the split, the split) of at most `most` images: a fixed random choice, in the
    split's order, when it is larger (what a report draws from a huge split)."""
    index = torch.arange(len(split))
    if len(split) <= most:
        return index, split
    pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))
    index = pick[:most].sort().values
    return index, split.take(index)
