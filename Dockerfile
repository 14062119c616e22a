# dicomweb-server: one container, embedded SQLite index and blobs under /data.
# Build: docker build -t dicomweb-server .
# Run:   docker run -p 8042:8042 -v pacs:/data dicomweb-server
# The container binds 0.0.0.0, which the server refuses without authentication unless
# --insecure is given: keep the published port on a trusted network, or put an
# authenticating reverse proxy in front (set DICOMWEB_PUBLIC_BASE_URL behind it).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DICOMWEB_DATA_DIR=/data \
    DICOMWEB_HOST=0.0.0.0 \
    DICOMWEB_PORT=8042

RUN useradd --system --create-home --home-dir /home/pacs pacs \
    && mkdir -p /data && chown pacs:pacs /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY dicomweb_server ./dicomweb_server
RUN pip install .
# The OHIF viewer: pinned build from npm, integrity-checked (scripts/fetch-viewer.py).
COPY scripts/fetch-viewer.py ./scripts/
COPY viewer_static/app-config.js ./viewer_static/
RUN python scripts/fetch-viewer.py --dest /app/viewer_static/dist --cache /tmp/ohif \
    && rm -rf /tmp/ohif
ENV DICOMWEB_VIEWER_DIR=/app/viewer_static/dist \
    DICOMWEB_VIEWER_APP_CONFIG=/app/viewer_static/app-config.js

USER pacs
VOLUME ["/data"]
EXPOSE 8042
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8042/health', timeout=4).status == 200 else 1)"
ENTRYPOINT ["dicomweb-server"]
CMD ["serve", "--insecure"]
