"""How soon training starts: `kiln train` on digits (the default dataset) against the floor, a
plain PyTorch script that imports torch, builds a small convnet and an SGD optimizer and takes
one step. Each runs in a fresh process; the time is from the process's start (as the kernel
records it) to the end of the first training step, then to the process's exit.

    python benchmarks/start.py [--repeats 5]

The floor is what any PyTorch program pays on this machine before it can step: importing torch,
then torch._dynamo, which every torch.optim optimizer imports when it is built and when it
steps (through torch._disable_dynamo and the step's grad-mode wrapper).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The floor, run as `python -c FLOOR`: prints the seconds from process start to each mark.
FLOOR = """
import os, time
def since_start():
    with open(f"/proc/{os.getpid()}/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - ticks / os.sysconf("SC_CLK_TCK")
import torch
from torch import nn
imported = since_start()
x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                      nn.Linear(32 * 64, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loss = nn.functional.cross_entropy(model(x), y)
optimizer.zero_grad()
loss.backward()
optimizer.step()
print(imported, since_start())
"""


def floor() -> dict[str, float]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", FLOOR], capture_output=True, text=True, check=True)
    imported, stepped = map(float, out.stdout.split())
    return {"imported": imported, "first_step": stepped, "exit": time.perf_counter() - started}


def kiln_digits() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as runs:
        started = time.perf_counter()
        cmd = [sys.executable, "-m", "kiln", "train", f"run.dir={runs}", "name=start", "-q"]
        env = {**os.environ, "KILN_OFFLINE": "1"}
        subprocess.run(cmd, capture_output=True, check=True, env=env)
        seconds = time.perf_counter() - started
        marks = json.loads((Path(runs) / "start" / "phases.json").read_text())
        marks = marks["seconds_since_process_start"]
    return {"imported": marks["imported"], "first_step": marks["first_step"], "exit": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"plain PyTorch": [], "kiln train (digits)": []}
    for _ in range(args.repeats):  # alternated, so a change in the machine's load hits both
        results["plain PyTorch"].append(floor())
        results["kiln train (digits)"].append(kiln_digits())
    print(f"seconds from process start, median of {args.repeats} (load {os.getloadavg()[0]:.1f})")
    print("| program | imports done | first step done | exit |")
    print("| --- | ---: | ---: | ---: |")
    for name, runs in results.items():
        cells = [statistics.median(r[k] for r in runs) for k in ("imported", "first_step", "exit")]
        print(f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
