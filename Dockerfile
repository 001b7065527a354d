# fmbot: one image for every role (ingress, worker, console, bench).
# llama-cpp-python compiles from source here: build-essential and cmake are needed, and the
# first build takes several minutes.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FMBOT_HOME=/data

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
# The versions CI tested (requirements/dev.lock pins every dependency; only fmbot's own are installed).
COPY requirements ./requirements
COPY bot ./bot
COPY adapters ./adapters
COPY prompts ./prompts
RUN pip install -c requirements/dev.lock .

RUN useradd --create-home --uid 10001 fmbot && mkdir -p /data && chown fmbot /data
USER fmbot
VOLUME ["/data"]

# SIGTERM lets workers finish the turns in progress and hand their partitions over.
STOPSIGNAL SIGTERM
ENTRYPOINT ["fmbot"]
CMD ["--help"]
