"""Where a folder or CSV dataset's images come from, and the stamps (size, modification time)
that tell the decoded cache (kiln.data.cache) whether they changed since it was written."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from kiln.data.scan import ScanResult, _ignored, _read_csv, scan_csv, scan_folder
from kiln.data.verify import unique_paths

Stamp = list[int] | None  # [size, modification time in ns], or None: the path does not exist


@dataclass
class Source:
    """Where a dataset's images come from: an image folder, or a CSV naming files under root."""

    root: Path
    csv: Path | None = None
    columns: tuple[str | int, str | int, str] = ("file", "label", "split")  # names or positions
    targets: tuple[str, ...] = ()
    label_sep: str | None = None  # data.label_sep: several labels in one cell

    @property
    def dataset(self) -> Path:
        return (self.csv or self.root).resolve()

    def scan(self) -> ScanResult:
        if self.csv is None:
            return scan_folder(self.root)
        return scan_csv(self.csv, self.root, *self.columns, list(self.targets) or None,
                        self.label_sep)  # fmt: skip

    def key(self, cfg) -> str:
        """The entry's name: what decides the decoded pixels and labels, hashed."""
        settings = [str(self.root.resolve()), str(self.dataset), self.columns, self.targets,
                    cfg.channels, cfg.size]  # fmt: skip
        if self.label_sep is not None or cfg.resize != "cover":  # (older entries keep their key)
            settings += [self.label_sep, cfg.resize]
        digest = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", self.dataset.stem)[:40].lstrip(".")
        return f"{name or 'data'}-{digest}"

    def listings(self) -> dict[str, Stamp]:
        """Stamps of what lists the images: the CSV, or every folder a scan walks (stamped before
        it is listed: a file added while the scan runs changes the stamp afterwards)."""
        base = self.root.resolve()
        if self.csv is not None:
            return {str(self.csv.resolve()): stamp(self.csv)}
        stamps: dict[str, Stamp] = {}
        seen: set[tuple[int, int]] = set()  # symlinked folders are followed, loops end
        pending = [str(base)]
        while pending:
            folder = pending.pop()
            try:
                st = os.stat(folder)
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                with os.scandir(folder) as it:
                    names = [e.name for e in it if e.is_dir() and not _ignored(e.name)]
            except OSError:
                continue  # the scan reports it
            stamps[relative(base, folder)] = [st.st_size, st.st_mtime_ns]
            pending += [os.path.join(folder, name) for name in names]
        return stamps

    def files(self, scan: ScanResult) -> dict[str, Stamp]:
        """Stamps of the images: the listed ones, and for a CSV every path it names, found or not
        (a missing file that appears must rebuild the entry)."""
        base = self.root.resolve()
        if self.csv is None:
            return {relative(base, p): stamp(p) for p in unique_paths(scan.samples)}
        _, rows = _read_csv(self.csv)
        cells = [os.path.normpath((row.get(self.columns[0]) or "").strip()) for _, row in rows]
        named = [c for c in cells if c != "." and not os.path.isabs(c) and not c.startswith("..")]
        return {c: stamp(os.path.join(base, c)) for c in dict.fromkeys(named)}


def stamp(path: str | Path) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def relative(base: Path, path: str | Path) -> str:
    """Path relative to base when inside it (as manifests keep them), else absolute."""
    text, prefix = str(path), str(base) + os.sep
    return text[len(prefix) :] if text.startswith(prefix) else ("." if text == str(base) else text)
