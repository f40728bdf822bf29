# losswatch server image: `docker-compose up` runs it next to PostgreSQL (see docs/deploy.md).
#
#   docker build -t losswatch .
#   docker run -p 8000:8000 -e LOSSWATCH_DATABASE_URL=postgresql+psycopg://user:pw@db/losswatch losswatch
#
# Without LOSSWATCH_DATABASE_URL the server uses a SQLite file in /data (mount a volume there).
# `losswatch serve` applies pending migrations at start. It binds 0.0.0.0, so API tokens are
# required (LOSSWATCH_AUTH=on); make the first one with `losswatch token create`.

# Stage 1: the dashboard's chart library at the version pinned in dashboard/package-lock.json,
# the same files `make assets` puts in dashboard/static/vendor/.
FROM node:20-slim AS assets
WORKDIR /build/dashboard
COPY dashboard/package.json dashboard/package-lock.json ./
RUN npm ci --no-audit --no-fund --silent \
 && mkdir -p /vendor \
 && cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css /vendor/

# Stage 2: the server.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
# .dockerignore keeps virtualenvs, node_modules, tests, bench and databases out of the context.
COPY . .
COPY --from=assets /vendor/ dashboard/static/vendor/
# A regular (non-editable) install: the image needs no source tree at run time.
RUN pip install ".[server,postgres]" \
 && cd / && rm -rf /build \
 && useradd --system --uid 10001 --user-group --home-dir /data --create-home --shell /usr/sbin/nologin losswatch

USER losswatch
WORKDIR /data
VOLUME ["/data"]

ENV LOSSWATCH_HOST=0.0.0.0 \
    LOSSWATCH_PORT=8000 \
    LOSSWATCH_AUTH=on \
    LOSSWATCH_DATABASE_URL=sqlite:////data/losswatch.db

EXPOSE 8000

# A TCP check: it needs no token and no knowledge of the routes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import socket; socket.create_connection(('127.0.0.1', 8000), 2).close()"]

CMD ["losswatch", "serve", "--host", "0.0.0.0", "--port", "8000"]
