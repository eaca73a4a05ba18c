FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 comfyhub

WORKDIR /app
COPY pyproject.toml README.md ./
COPY comfyhub ./comfyhub
COPY recovery ./recovery
RUN pip install --no-cache-dir ".[scale]" \
    && pip install --no-cache-dir --no-deps "comfyui-manager>=4.3,<5"
COPY . .

ENV COMFYHUB_DATA_DIR=/data \
    COMFYHUB_HOST=0.0.0.0 \
    COMFYHUB_PORT=4000 \
    PYTHONUNBUFFERED=1
RUN mkdir -p /data && chown comfyhub:comfyhub /data
VOLUME ["/data"]
USER comfyhub
EXPOSE 4000
# Off loopback a login is required: create a user first with
#   docker run -it -v comfyhub:/data IMAGE python manage.py createsuperuser
CMD ["sh", "-c", "python manage.py migrate --noinput && exec python manage.py serve"]
