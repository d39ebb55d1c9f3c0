"""Serving under load, and what int8 buys: one MNIST model, exported and served several ways.

    python benchmarks/serve.py --data-root ../shared/datasets --write-readme

Trains recipes/mnist-fast.yaml for one epoch, exports it (ONNX fp32 and int8, TorchScript), then
for each server set-up starts `kiln serve` on loopback and runs the load test the suite runs:
N clients (default 50), each with one keep-alive connection, posting one real MNIST digit as a
PNG back to back for S seconds (default 20). Clients and server share this machine's cores.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image
from readme_block import cpu_name, write_block

from kiln.data.builtin import read_idx
from kiln.deploy.load import free_port, multipart, run_load, wait_for_health

REPO = Path(__file__).resolve().parents[1]
KILN = [sys.executable, "-m", "kiln"]


def kiln(*args, cwd: Path) -> str:
    out = subprocess.run([*KILN, *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"kiln {' '.join(map(str, args))} failed:\n{out.stderr}")
    return out.stdout


def digit_png(root: Path) -> bytes:
    raw = root / "MNIST" / "raw"
    images = read_idx(gzip.decompress((raw / "t10k-images-idx3-ubyte.gz").read_bytes()), raw)
    buf = io.BytesIO()
    Image.fromarray(images[0]).save(buf, "PNG")
    return buf.getvalue()


def load_test(target: Path, extra: list[str], body, ctype, clients, seconds, cwd: Path) -> dict:
    port = free_port()
    server = subprocess.Popen([*KILN, "serve", target, "--port", str(port), *extra], cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_for_health(url, server):
            raise SystemExit(f"kiln serve {target} did not come up")
        run_load(f"{url}/predict", body, ctype, clients=clients, seconds=2)  # warm-up
        result = run_load(f"{url}/predict", body, ctype, clients=clients, seconds=seconds)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "requests": result.requests,
        "errors": len(result.errors),
        "rps": result.per_second,
        "p50": result.percentile(50),
        "p99": result.percentile(99),
    }


def export_figures(run: Path, cwd: Path) -> dict:
    out = kiln("export", run, "--quantize", "dynamic", "-o", cwd / "int8.onnx", cwd=cwd)
    size = re.search(r"Size: ([\d.]+) MB fp32 -> ([\d.]+) MB int8", out)
    lat = re.search(r"one image: ([\d.]+) ms fp32, ([\d.]+) ms int8", out)
    acc = re.search(r"on (\d+) validation images: ([\d.]+)% fp32, ([\d.]+)% int8", out)
    return {"size": size.groups(), "latency": lat.groups(), "accuracy": acc.groups()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kiln-serve-bench-") as tmp:
        work = Path(tmp)
        kiln(
            "train",
            REPO / "recipes" / "mnist-fast.yaml",
            "epochs=1",
            "run.report=false",
            f"data.root={args.data_root.resolve()}",
            f"run.dir={work}",
            "name=mnist",
            cwd=work,
        )
        run = work / "mnist"
        kiln("export", run, "-o", work / "fp32.onnx", cwd=work)
        kiln("export", run, "--format", "torchscript", "-o", work / "m.torchscript.pt", cwd=work)
        quant = export_figures(run, work)
        body, ctype = multipart([("digit.png", digit_png(args.data_root))])
        setups = [
            ("ONNX (onnxruntime), batching on", work / "fp32.onnx", []),
            ("ONNX (onnxruntime), batching off (--max-batch 1)", work / "fp32.onnx",
             ["--max-batch", "1"]),
            ("ONNX int8 (onnxruntime), batching on", work / "int8.onnx", []),
            ("TorchScript, batching on", work / "m.torchscript.pt", []),
            ("run directory (eager PyTorch), batching on", run, []),
        ]  # fmt: skip
        rows = []
        for name, target, extra in setups:
            figures = load_test(target, extra, body, ctype, args.clients, args.seconds, work)
            rows.append((name, figures))
            print(f"{name:52s} {figures['rps']:8.0f} req/s  p50 {figures['p50']:6.1f} ms  "
                  f"p99 {figures['p99']:6.1f} ms  errors {figures['errors']}")  # fmt: skip

    lines = [
        f"Measured on {cpu_name()}, server and {args.clients} clients on the same machine, "
        f"{args.seconds:g} s each after a 2 s warm-up; one 28x28 MNIST PNG per request.",
        "",
        "| server | requests/s | p50 latency | p99 latency | requests | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, f in rows:
        lines.append(f"| {name} | {f['rps']:,.0f} | {f['p50']:.1f} ms | {f['p99']:.1f} ms "
                     f"| {f['requests']:,} | {f['errors']} |")  # fmt: skip
    (fp32_mb, int8_mb), (fp32_ms, int8_ms) = quant["size"], quant["latency"]
    n, fp32_acc, int8_acc = quant["accuracy"]
    lines += [
        "",
        "`kiln export RUN --quantize dynamic` on the same model (ONNX, onnxruntime):",
        "",
        "| | file | one-image latency | validation accuracy |",
        "|---|---:|---:|---:|",
        f"| fp32 | {fp32_mb} MB | {fp32_ms} ms | {fp32_acc}% |",
        f"| int8 (dynamic) | {int8_mb} MB | {int8_ms} ms | {int8_acc}% |",
        "",
        f"Accuracy on {n} validation images.",
    ]
    text = "\n".join(lines)
    print(text)
    print(json.dumps({"rows": rows, "quantized": quant}))
    if args.write_readme:
        write_block("serve", text)


if __name__ == "__main__":
    main()
