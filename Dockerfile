# syntax=docker/dockerfile:1
# Image of the `stream` consumer. The builder stage installs the package and its
# dependencies into a self-contained venv; the runtime stage copies only that venv,
# so no build tooling, pip cache or source tree ends up in the final image.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Same path as in the runtime stage: console-script shebangs point into the venv.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first, from the metadata alone (with an empty placeholder package):
# this heavy layer is reused as long as pyproject.toml is unchanged.
COPY pyproject.toml README.md ./
RUN mkdir stream \
    && touch stream/__init__.py \
    && pip install . \
    && rm -rf stream build

# A C compiler for the compiled forest walk and window kernels (setup.py builds the .pyx);
# only in this stage: the runtime stage copies the built venv, not the toolchain.
# Unpinned on purpose: the slim image's own Debian release fixes the versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY setup.py ./
COPY stream ./stream
# A regular (non-editable) install, since the runtime stage has no /src to point
# back to. pip byte-compiles by default, which matters: the runtime user cannot
# write .pyc files into the root-owned venv, so every start would recompile.
RUN pip install --no-deps --force-reinstall . \
    && stream --help > /dev/null \
    && python -c "import stream.scoring._forest, stream.state._wincore"


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="stream" \
      org.opencontainers.image.description="Streaming anomaly detection for network telemetry" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STREAM_METRICS_PORT=9108 \
    STREAM_METRICS_HOST=0.0.0.0 \
    STREAM_LOG_FORMAT=json

# Fixed uid/gid so volume ownership and pod security policies can refer to them.
RUN groupadd --system --gid 10001 stream \
    && useradd --system --uid 10001 --gid stream --home-dir /home/stream \
       --create-home --shell /usr/sbin/nologin stream \
    && mkdir -p /var/lib/stream/models && chown stream:stream /var/lib/stream/models

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
WORKDIR /home/stream

EXPOSE 9108

# No curl in the slim image; the interpreter is already there. urlopen raises on
# a 503, so a stale main loop makes the check fail.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('STREAM_METRICS_PORT', '9108'), timeout=4)"]

ENTRYPOINT ["stream"]
CMD ["run"]
