# imagebot: `docker build -t imagebot .` then `docker run --env-file .env -p 8080:8080 imagebot`
# Stage 1 builds a virtual environment with the pinned dependencies; stage 2 runs it as a non-root user.
# The defaults ship inside the package; nothing from config/ is baked in (no .env, no overrides). To override
# settings, mount a file and name it: -v "$PWD/config/settings.toml:/etc/imagebot/settings.toml:ro"
# -e IMAGEBOT_CONFIG_FILE=/etc/imagebot/settings.toml
# .dockerignore keeps everything but the files COPYed below out of the build context (.env, data/, .venv, .git).
# Stopping: SIGTERM lets running jobs finish for IMAGEBOT_SHUTDOWN_GRACE seconds (default 10); docker stop waits
# only 10 s before SIGKILL, so give it more: `docker stop --time 30 ...`, `docker run --stop-timeout 30 ...`, or
# compose's `stop_grace_period: 30s` (docker-compose.yml) — always above IMAGEBOT_SHUTDOWN_GRACE plus a few seconds.
FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY config/constraints.txt config/constraints.txt
COPY bot bot
COPY adapters adapters
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -c config/constraints.txt .

FROM python:3.11-slim
RUN groupadd --gid 10001 imagebot \
    && useradd --create-home --uid 10001 --gid 10001 imagebot \
    && mkdir /data \
    && chown imagebot:imagebot /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    IMAGEBOT_DATA_DIR=/data
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('IMAGEBOT_WEB_PORT', '8080') + '/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["imagebot"]
CMD ["run"]
