# syntax=docker/dockerfile:1
# The caravan image. Every Nomad job of the project runs it, each with its own command:
#   steps      python -m jobs.<step>            (nomad/<step>.nomad.hcl)
#   retrain    /bin/sh -c '... exec python -m caravan.entrypoint --deadline ... luigi --module pipelines.ranker ...'
#   luigid     luigid --port ... --state-path /var/lib/luigid/state.pickle
#   serving    caravan serve --model <model> --port 8080 (also the default command)
# Nomad's docker driver replaces CMD with the task's command and args and keeps the ENTRYPOINT, so the
# entrypoint is only an init (tini) that runs whatever it is given.
# No secret is ever built in: tasks get theirs from Vault at run time (templates into their environment).
#
# Reproducible: the base image is pinned by digest and every Python package by version and hash.
# PYTHON_IMAGE is the official python:3.11-slim-bookworm multi-platform index (Python 3.11.16, 25 Aug 2026) as
# docker-library lists it: https://github.com/docker-library/repo-info/blob/bc9bbb47fc709dc4b29d3b128d66823b953b97a7/repos/python/remote/3.11-slim-bookworm.md
# Move it on purpose (a new digest from that page, or `docker buildx imagetools inspect python:3.11-slim-bookworm`).
# requirements/runtime.txt and requirements/build.txt are pip-compile --generate-hashes locks (README, "Image").
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:fe556eaffd0d96abd8685b83bb8a69addd0dc730fa193669a7df0d49ddcfac02

# -- build: the project's wheel and the wheels of its locked runtime dependencies ------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# The build backend from its lock, and no build isolation below: no build fetches an unpinned setuptools.
COPY requirements/ requirements/
RUN pip install --no-cache-dir --require-hashes -r requirements/build.txt
# Every runtime dependency at its locked version, each download checked against its hashes.
RUN pip wheel --no-cache-dir --no-build-isolation --require-hashes --wheel-dir /wheels -r requirements/runtime.txt
# setup.cfg reads the long description from README.md
COPY pyproject.toml setup.cfg README.md ./
COPY src/ src/
COPY jobs/ jobs/
COPY pipelines/ pipelines/
RUN pip wheel --no-cache-dir --no-build-isolation --no-deps --wheel-dir /wheels .

# -- runtime: Python, the installed wheels, the job specs; no compiler, no pip cache, no test extras -------
FROM ${PYTHON_IMAGE} AS runtime

# libgomp1: the OpenMP runtime LightGBM's wheel links against. tini: PID 1 that forwards Nomad's SIGTERM to
# the process (python would ignore it as PID 1) and reaps zombies.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 tini \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 caravan \
 && useradd --system --uid 10001 --gid caravan --home-dir /home/caravan --create-home \
    --shell /usr/sbin/nologin caravan

# The virtualenv first on PATH: `python`, `caravan`, `luigi` and `luigid` are the installed ones.
ENV PATH=/opt/caravan/bin:$PATH
ENV VIRTUAL_ENV=/opt/caravan \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CARAVAN_JOBSPEC_DIR=/app/nomad

# Only the wheels built above, only the runtime dependencies (install_requires): /wheels holds exactly the
# locked versions (their hashes were checked when the build stage fetched them), --no-index never reaches
# out to a registry, and the wheels are mounted, not copied, so no layer keeps them.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/caravan \
 && /opt/caravan/bin/pip install --no-cache-dir --no-index --find-links=/wheels caravan

# luigi reads luigi.cfg from the working directory; the local executor and `caravan publish` read nomad/.
# .caravan/ is where the embedded defaults write artifacts (Nomad jobs set CARAVAN_ARTIFACT_ROOT instead).
WORKDIR /app
COPY luigi.cfg ./
COPY nomad/ nomad/
RUN mkdir -p /app/.caravan && chown 10001:10001 /app/.caravan

USER 10001:10001

# The model server's port (serving.nomad.hcl maps its "http" port to 8080). No HEALTHCHECK: most jobs that
# run this image are batch steps; the serving job's Consul check on /health is the health check.
EXPOSE 8080

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["caravan", "serve", "--model", "ranker", "--port", "8080"]
