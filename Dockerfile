# The segmenter worker. Built by docker-compose.yml; run more replicas to share the partitions.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream_app ./stream_app
RUN pip install . \
    && useradd --system --uid 10001 --create-home segmenter \
    && mkdir /data && chown segmenter /data

USER segmenter
# Local table state (rocksdb); rebuilt from the changelog topics when the container is new.
ENV SEGMENTER_DATA_DIR=/data \
    SEGMENTER_WEB_PORT=6066
EXPOSE 6066

CMD ["segmenter", "worker"]
