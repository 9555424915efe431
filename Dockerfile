# syntax=docker/dockerfile:1.7
# Every cutalign image, from one build: the `cutalign` package in a venv, non-root, with one entry point per
# service. Build from the repository root (the context is filtered by .dockerignore):
#   docker build --build-arg SERVICE=generator -t ghcr.io/cutalign/generator:0.1.0 .
#   docker build --build-arg SERVICE=trainer --build-arg TORCH_VARIANT=cu128 -t ghcr.io/cutalign/trainer:0.1.0 .
# SERVICE is one of: policy-server, generator, judge, target-builder, feedback, trainer (each a stage below,
# so `--target <service>` builds the same image). The venv stages are shared: building a second service reuses
# them from the cache. No secret is baked in: credentials arrive as env from Kubernetes Secrets at run time.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG SERVICE

FROM ${PYTHON_IMAGE} AS build
# torch wheel index: cpu, or a CUDA variant such as cu128 (the trainer and GPU policy servers); the version
# itself is pyproject.toml's pin.
ARG TORCH_VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
# torch first, from the variant's index at exactly the pinned version, so `pip install .` never pulls another build.
RUN TORCH_PIN="$(python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print(next(d for d in deps if d.startswith('torch==')))")" \
 && pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" "${TORCH_PIN}"
COPY services/cutalign/ services/cutalign/
RUN pip install .

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 cutalign \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin cutalign
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
WORKDIR /app
USER 10001:10001
EXPOSE 8080

# The embedded policy server (KServe model server); also runs the model sync of the vLLM/TGI pods.
FROM runtime AS policy-server
ENTRYPOINT ["cutalign", "policy", "serve"]

# prompts -> policy -> samples; also runs the chart's pipeline-upload hook.
FROM runtime AS generator
ENTRYPOINT ["cutalign", "generate"]

# samples -> judgments (Kafka); `cutalign judge kserve` serves a judge on KServe.
FROM runtime AS judge
ENTRYPOINT ["cutalign", "judge", "serve"]

# judgments -> sealed training shards in S3.
FROM runtime AS target-builder
ENTRYPOINT ["cutalign", "builder", "run"]

# POST /v1/feedback from production services -> Kafka.
FROM runtime AS feedback
ENTRYPOINT ["cutalign", "feedback", "serve"]

# torchrun entry of PyTorchJobs/TrainJobs; also the image of the pipeline's steps.
FROM runtime AS trainer
COPY services/trainer/main.py /app/services/trainer/main.py
EXPOSE 23456
ENTRYPOINT ["python", "/app/services/trainer/main.py"]

FROM ${SERVICE}
