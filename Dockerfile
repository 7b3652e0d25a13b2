# agentexec: one image for the API (gunicorn), the Celery worker and beat, Flower and migrations.
# docker-compose.yml picks the process with `command:`; the default is the API.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LOG_FORMAT=json

WORKDIR /srv/agentexec

# Dependencies first (a layer that survives code edits), then the code.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

COPY . .
# ./sdk is agentexec-client, the library the CLI is built on (its own deps are among the above).
RUN pip install --no-deps ./sdk . \
    && useradd --system --uid 10001 --home-dir /srv/agentexec --shell /usr/sbin/nologin agentexec \
    && mkdir -p /var/lib/agentexec && chown agentexec /var/lib/agentexec
USER agentexec

EXPOSE 8000 5555
CMD ["gunicorn", "--worker-class", "api.server.GeventWorker", "--workers", "2", "--worker-connections", "10000", \
     "--keep-alive", "5", "--bind", "0.0.0.0:8000", "--timeout", "60", "--graceful-timeout", "10", "api:create_app()"]
