# syntax=docker/dockerfile:1
# The caravan image. Every Nomad job of the project runs it, each with its own command:
#   steps      python -m jobs.<step>            (nomad/<step>.nomad.hcl)
#   retrain    /bin/sh -c '... exec luigi --module pipelines.ranker RetrainRanker ...'
#   luigid     luigid --port ... --state-path /var/lib/luigid/state.pickle
#   serving    caravan serve --model <model> --port 8080 (also the default command)
# Nomad's docker driver replaces CMD with the task's command and args and keeps the ENTRYPOINT, so the
# entrypoint is only an init (tini) that runs whatever it is given.
# No secret is ever built in: tasks get theirs from Vault at run time (templates into their environment).

# -- build: the project's wheel and the wheels of its runtime dependencies -------------------------------
FROM python:3.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# setup.cfg reads the long description from README.md
COPY pyproject.toml setup.cfg README.md ./
COPY src/ src/
COPY jobs/ jobs/
COPY pipelines/ pipelines/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# -- runtime: Python, the installed wheels, the job specs; no compiler, no pip cache, no test extras -------
FROM python:3.11-slim-bookworm AS runtime

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

# Only the wheels built above, only the runtime dependencies (install_requires): --no-index never reaches
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
