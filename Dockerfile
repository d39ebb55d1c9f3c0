# syntax=docker/dockerfile:1
# CPU image that serves one exported model: `docker run -v $PWD/export:/model:ro -p 8000:8000 kiln`.
FROM python:3.11-slim

# Logs reach `docker logs` unbuffered; no .pyc writes into root-owned site-packages; quiet pip.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A fixed uid, so a mounted export only has to be readable by 10001 (or everyone); a home, because
# torch and matplotlib want somewhere to put their caches.
RUN useradd --uid 10001 --create-home --home-dir /home/kiln --shell /usr/sbin/nologin kiln

WORKDIR /app

# Only what `pip install .` reads: editing tests, benchmarks or docs doesn't invalidate this layer.
COPY pyproject.toml constraints.txt README.md ./
COPY src/ ./src/

# PyTorch's CPU index: PyPI's Linux torch wheel drags in gigabytes of CUDA libraries. The
# constraints pin every package to the versions the test suite ran with (torch==2.14.1 matches
# 2.14.1+cpu). Installed as root into site-packages, so the server's user can't modify its code.
# The serve and export extras: FastAPI and uvicorn, and onnxruntime for .onnx files.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        -c constraints.txt '.[serve,export]'

# Everything from here on, the server included, runs without root.
USER kiln

EXPOSE 8000

# slim has no curl; python is there anyway. /health needs no token. Keep the port in step with CMD.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# Exec form: kiln is PID 1 and gets SIGTERM from `docker stop`, and CMD's words are appended.
ENTRYPOINT ["kiln", "serve"]
# kiln serve binds 127.0.0.1 by default, unreachable from outside the container. Mount a run,
# an export file, or a folder with one export and its .json sidecar at /model.
CMD ["/model", "--host", "0.0.0.0", "--port", "8000"]
