"""The deploy verbs of the `kiln` command: `kiln export` and `kiln serve`."""

from __future__ import annotations

import argparse
import os

from kiln.errors import ConfigError

EPILOG_EXPORT = """examples:
  kiln export runs/mnist-cnn                          ONNX at runs/mnist-cnn/exports/model.onnx
  kiln export runs/mnist-cnn --format torchscript -o model.torchscript.pt
  kiln export runs/mnist-cnn --quantize dynamic       int8 weights; prints size, latency, accuracy
  kiln export runs/mnist-cnn --quantize static        int8 weights and activations, calibrated
                                                      on 512 training images
  kiln export runs/mnist-cnn --format executorch      .pte for phones and boards (XNNPACK)
  kiln export runs/mnist-cnn --format executorch --quantize static     int8 .pte
  kiln export runs/mnist-cnn --embed-preprocessing    takes decoded images of any size
  kiln export runs/mnist-cnn --format executorch --embed-preprocessing --input-size 480x640
Each export gets a sidecar FILE.json (classes, input size, mean/std) that kiln serve reads."""

EPILOG_SERVE = """examples:
  kiln serve runs/mnist-cnn                           eager PyTorch from the run directory
  kiln serve runs/mnist-cnn/exports/model.onnx        onnxruntime
  KILN_TOKEN=secret kiln serve model.onnx --host 0.0.0.0
routes: POST /predict, GET /health, GET /metadata, GET /docs, GET /redoc, and a page at /
Without a token, requests must address the server by an IP address, localhost or --host (DNS
rebinding); with one, any name. Refusals are JSON: 4xx, or 503 with Retry-After when busy."""


def image_size(text: str) -> tuple[int, int]:
    """'480x640' -> (480, 640): height x width."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected HEIGHTxWIDTH in pixels, e.g. 480x640, got {text!r}"
        )
    return int(parts[0]), int(parts[1])


def cmd_export(ns: argparse.Namespace) -> int:
    from kiln.deploy.export import export_run
    from kiln.deploy.quantize import Calibration

    calibration = Calibration(ns.calibration, ns.per_channel, ns.calibration_images)
    result = export_run(
        ns.run, ns.format, quantize=ns.quantize, output=ns.output, which=ns.checkpoint,
        parity_images=ns.parity_images, calibration=calibration,
        embed_preprocessing=ns.embed_preprocessing, input_size=ns.input_size,
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
    from kiln.deploy import check_serve

    check_serve()  # one line naming the extra, before FastAPI is imported
    from kiln.deploy.serve import Protection, default_threads, serve
    from kiln.deploy.uploads import MB, Limits

    if ns.decode_threads is None:
        ns.decode_threads = default_threads()
    positive = ("max_upload_mb", "max_pixels", "max_images", "max_batch", "body_timeout",
                "decode_threads", "max_connections")  # fmt: skip
    for name in positive:
        if getattr(ns, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive")
    if ns.queue < 0:
        raise ConfigError("--queue must be 0 or more")
    if not 0 <= ns.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {ns.port}")
    token = ns.token or os.environ.get("KILN_TOKEN") or None
    limits = Limits(int(ns.max_upload_mb * MB), ns.max_pixels, ns.max_images)
    protection = Protection(
        allow_origins=tuple(ns.allow_origin), body_timeout=ns.body_timeout,
        decode_threads=ns.decode_threads, queue=ns.queue, max_connections=ns.max_connections,
    )  # fmt: skip
    serve(ns.target, ns.host, ns.port, token=token, limits=limits, max_batch=ns.max_batch,
          protection=protection, checkpoint=ns.checkpoint)  # fmt: skip
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
    p.add_argument(
        "--format", default="onnx", choices=["onnx", "torchscript", "state_dict", "executorch"]
    )
    p.add_argument(
        "--quantize", choices=["dynamic", "static"],
        help="int8: dynamic (weights; onnx, torchscript) or static (weights and activations, "
        "calibrated on training images; onnx, executorch)",
    )  # fmt: skip
    p.add_argument(
        "--calibration", default="minmax", choices=["minmax", "entropy", "percentile"],
        help="static int8, onnx: how activation ranges are set from the calibration images "
        "(minmax: the observed range; entropy, percentile: clip outliers)",
    )  # fmt: skip
    p.add_argument(
        "--per-channel", action=argparse.BooleanOptionalAction, default=True,
        help="static int8: a scale per output channel of each weight (default), or per tensor",
    )  # fmt: skip
    p.add_argument("--calibration-images", type=int, default=512,
                   help="static int8: training images to calibrate on (512)")  # fmt: skip
    p.add_argument("-o", "--output", help="file or folder (default RUN_DIR/exports/)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--parity-images", type=int, default=256, help="images to check (256)")
    p.add_argument(
        "--embed-preprocessing", action="store_true",
        help="the graph takes decoded uint8 RGB images (N, H, W, 3) of any size and resizes, "
        "crops and normalizes them itself (onnx, torchscript; executorch: of one size)",
    )  # fmt: skip
    p.add_argument(
        "--input-size", type=image_size, metavar="HxW",
        help="with --embed-preprocessing --format executorch: the one size the program takes "
        "(e.g. 480x640, a camera's frames; default the model's own)",
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
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="of a run")
    p.add_argument("--max-upload-mb", type=float, default=10, help="request body limit (10)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="per image (40,000,000)")
    p.add_argument("--max-images", type=int, default=64, help="per request (64)")
    p.add_argument(
        "--max-batch", type=int, default=64,
        help="images per forward pass when requests queue up (64; 1 turns batching off)",
    )  # fmt: skip
    g = p.add_argument_group("protection")
    g.add_argument(
        "--allow-origin", action="append", default=[], metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. https://app.example.com) call the API (CORS); "
        "repeat for more; none by default",
    )  # fmt: skip
    g.add_argument("--body-timeout", type=float, default=30,
                   help="seconds for a request body to arrive in full, else 408 (30)")  # fmt: skip
    g.add_argument("--decode-threads", type=int, default=None,
                   help="images decoded at once, off the event loop (2; 1 on 2 cores)")  # fmt: skip
    g.add_argument("--queue", type=int, default=128,
                   help="requests waiting to be decoded; past it 503 (128)")  # fmt: skip
    g.add_argument("--max-connections", type=int, default=256,
                   help="connections and requests at once; past it 503 (256)")  # fmt: skip
    p.set_defaults(func=cmd_serve)
