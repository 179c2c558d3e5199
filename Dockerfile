# The image for the api and worker services of docker-compose.yml.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/tilesight
COPY pyproject.toml README.md ./
COPY tilesight tilesight
COPY api api
COPY worker worker
COPY migrations migrations
COPY alembic.ini ./
COPY web web
RUN pip install --no-cache-dir .
