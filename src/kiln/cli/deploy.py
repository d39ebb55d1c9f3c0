"""The deploy verbs of the `kiln` command: `kiln export` and `kiln serve`."""

from __future__ import annotations

import argparse
import os

from kiln.errors import ConfigError

EPILOG_EXPORT = """examples:
  kiln export runs/mnist-cnn                          ONNX at runs/mnist-cnn/exports/model.onnx
  kiln export runs/mnist-cnn --format torchscript -o model.torchscript.pt
  kiln export runs/mnist-cnn --quantize dynamic       int8 weights; prints size, latency, accuracy
  kiln export runs/mnist-cnn --embed-preprocessing    takes decoded images of any size
Each export gets a sidecar FILE.json (classes, input size, mean/std) that kiln serve reads."""

EPILOG_SERVE = """examples:
  kiln serve runs/mnist-cnn                           eager PyTorch from the run directory
  kiln serve runs/mnist-cnn/exports/model.onnx        onnxruntime
  KILN_TOKEN=secret kiln serve model.onnx --host 0.0.0.0
routes: POST /predict, GET /health, GET /metadata, GET /docs, and a page at /"""


def cmd_export(ns: argparse.Namespace) -> int:
    from kiln.deploy.export import export_run

    result = export_run(
        ns.run, ns.format, quantize=ns.quantize, output=ns.output, which=ns.checkpoint,
        parity_images=ns.parity_images, embed_preprocessing=ns.embed_preprocessing,
    )  # fmt: skip
    for p in filter(None, (result.spec.parity, result.spec.parity_resized)):
        gate = f" (limit {p.tolerance:.0e})" if p.tolerance is not None else ""
        agree = f", top-1 agreement {p.top1_agreement:.2%}" if p.top1_agreement is not None else ""
        print(f"Parity on {p.images} {p.source}: largest output difference "
              f"{p.max_abs_logit_diff:.2e}{gate}{agree}")  # fmt: skip
    q = result.quantized
    if q:
        print(f"Size: {q['fp32_bytes'] / 1e6:.3f} MB fp32 -> {q['int8_bytes'] / 1e6:.3f} MB int8 "
              f"({q['int8_bytes'] / q['fp32_bytes']:.0%})")  # fmt: skip
        print(f"Latency, one image: {q['fp32_latency_ms']:.3f} ms fp32, "
              f"{q['int8_latency_ms']:.3f} ms int8")  # fmt: skip
        if "int8_accuracy" in q:
            print(f"Accuracy on {q['images']} validation images: {q['fp32_accuracy']:.2%} fp32, "
                  f"{q['int8_accuracy']:.2%} int8")  # fmt: skip
        else:
            print("Accuracy: not measured (the run's data is unavailable)")
    print(f"Exported {result.path}")
    print(f"Sidecar  {result.sidecar}")
    return 0


def cmd_serve(ns: argparse.Namespace) -> int:
    from kiln.deploy.serve import serve
    from kiln.deploy.uploads import MB, Limits

    for name in ("max_upload_mb", "max_pixels", "max_images", "max_batch"):
        if getattr(ns, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive")
    if not 0 <= ns.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {ns.port}")
    token = ns.token or os.environ.get("KILN_TOKEN") or None
    limits = Limits(int(ns.max_upload_mb * MB), ns.max_pixels, ns.max_images)
    serve(ns.target, ns.host, ns.port, token=token, limits=limits, max_batch=ns.max_batch)
    return 0


def add_parsers(verbs) -> None:
    p = verbs.add_parser(
        "export",
        help="export a run as ONNX, TorchScript or a state_dict, checked against the run",
        description="Export a run's checkpoint. The file is loaded back and its logits compared "
        "with the eager model's on validation images; above 1e-4 (fp32) nothing is written.",
        epilog=EPILOG_EXPORT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript", "state_dict"])
    p.add_argument("--quantize", choices=["dynamic"], help="int8 weights (onnx, torchscript)")
    p.add_argument("-o", "--output", help="file or folder (default RUN_DIR/exports/)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--parity-images", type=int, default=256, help="images to check (256)")
    p.add_argument(
        "--embed-preprocessing", action="store_true",
        help="the graph takes decoded uint8 RGB images (N, H, W, 3) of any size and resizes, "
        "crops and normalizes them itself (onnx, torchscript)",
    )  # fmt: skip
    p.set_defaults(func=cmd_export)

    p = verbs.add_parser(
        "serve",
        help="serve a run or an export over HTTP: /predict, /health, /metadata, /docs, a page",
        description="Serve predictions with FastAPI and uvicorn (onnxruntime for .onnx files).",
        epilog=EPILOG_SERVE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="RUN_DIR|EXPORT")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' (or set KILN_TOKEN)")
    p.add_argument("--max-upload-mb", type=float, default=10, help="request body limit (10)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="per image (40,000,000)")
    p.add_argument("--max-images", type=int, default=64, help="per request (64)")
    p.add_argument(
        "--max-batch", type=int, default=64,
        help="images per forward pass when requests queue up (64; 1 turns batching off)",
    )  # fmt: skip
    p.set_defaults(func=cmd_serve)
