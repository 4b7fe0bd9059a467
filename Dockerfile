# syntax=docker/dockerfile:1
# The forwarder as a container image.
#
#   docker build -t forwarder .
#
# Configure it with environment variables (every option is FORWARDER_<OPTION_NAME>):
#
#   docker run --rm -e FORWARDER_CONFIG_TOPIC=kafka:9092/forwarder_config \
#       -e FORWARDER_STATUS_TOPIC=kafka:9092/forwarder_status \
#       -e FORWARDER_OUTPUT_BROKER=kafka:9092 forwarder
#
# or with a mounted `key = value` file (see config-files/), passed as an argument:
#
#   docker run --rm -v "$PWD/config-files/forwarder.conf:/etc/forwarder/forwarder.conf:ro" \
#       forwarder --config-file /etc/forwarder/forwarder.conf
#
# (or -e FORWARDER_CONFIG_FILE=/etc/forwarder/forwarder.conf).  Precedence: arguments, then
# environment, then file.  EPICS client settings are plain EPICS_* variables, e.g.
# EPICS_CA_ADDR_LIST / EPICS_PVA_ADDR_LIST when the IOCs cannot be found by broadcast.
#
# The image sets FORWARDER_HTTP_PORT=8000: Prometheus /metrics and the /healthz probe that
# HEALTHCHECK uses.  Being an environment variable, it wins over http-port in a config
# file: to move the port, set FORWARDER_HTTP_PORT instead.

FROM python:3.11-slim AS build
WORKDIR /src
# .dockerignore lets only the package sources into the build context.
COPY . /src
RUN pip wheel --no-cache-dir --wheel-dir /wheels /src

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FORWARDER_HTTP_PORT=8000
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/forwarder-*.whl \
    && useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin forwarder \
    && mkdir -p /etc/forwarder
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM
# Healthy while /healthz answers with a 2xx status.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen(f\"http://127.0.0.1:{os.environ['FORWARDER_HTTP_PORT']}/healthz\", timeout=4)"]
ENTRYPOINT ["forwarder-launch"]
