# The hub as a container: python:3.11-slim, runs as a non-root user, checks its own /healthz.
# Built and run by docker-compose.yml next to a MongoDB replica set; on its own it uses the
# SQLite store under /app/data (mount a volume there).

FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
# Wheels for the project and its pinned dependencies, so the runtime image needs no compiler.
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --system --uid 10001 --user-group --home-dir /app --create-home hub
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels /wheels/*.whl && rm -rf /wheels
COPY --chown=hub:hub config.yaml /app/config.yaml
RUN mkdir -p /app/data && chown hub:hub /app/data
USER hub

# Listen on every interface inside the container (config.yaml keeps 127.0.0.1 for bare metal).
ENV HUB_WEB_HOST=0.0.0.0 \
    HUB_WEB_PORT=8080 \
    HUB_CONFIG=/app/config.yaml
EXPOSE 8080
VOLUME ["/app/data"]

# slim has no curl: ask /healthz with the standard library; any error or non-200 is unhealthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('HUB_WEB_PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]

CMD ["hub", "run", "--config", "/app/config.yaml"]
