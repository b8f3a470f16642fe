# syntax=docker/dockerfile:1
# Portcullis gateway image. Build: docker build -t portcullis:0.1.0 .
# Runs as uid 10001 on a read-only root filesystem: it writes only under
# /var/lib/portcullis (audit spool, heads file, SQLite) and /tmp, both volumes.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/portcullis
WORKDIR /src
# Only what the package needs (see .dockerignore): the project and its dependencies
# go into the venv, compiled to bytecode here because the final root is read-only.
COPY pyproject.toml README.md LICENSE ./
COPY gateway ./gateway
COPY adapters ./adapters
RUN /opt/portcullis/bin/pip install --no-compile . \
 && /opt/portcullis/bin/python -m compileall -q /opt/portcullis/lib

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="portcullis" \
      org.opencontainers.image.description="Policy-as-code gateway for AI agents" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 portcullis \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/portcullis --no-create-home \
            --shell /usr/sbin/nologin portcullis \
 && mkdir -p /etc/portcullis/agents /policies /var/lib/portcullis \
 && chown 10001:10001 /var/lib/portcullis
COPY --from=build /opt/portcullis /opt/portcullis
# The default policy set; the Helm chart mounts a ConfigMap or a git-sync volume over it.
COPY policies_rego/ /policies/
ENV PATH=/opt/portcullis/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/portcullis \
    TMPDIR=/tmp
USER 10001:10001
WORKDIR /var/lib/portcullis
VOLUME ["/var/lib/portcullis", "/tmp"]
EXPOSE 8080
# No curl in the slim image: the stdlib asks /healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["portcullis"]
CMD ["serve", "--config", "/etc/portcullis/gateway.yaml"]
