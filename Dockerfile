# One image for the operator, the routers and the workers; the entrypoint is `tandem`:
#   operator: args [operator, ...]   router: [router, ...]   worker: [worker, ...]
# Build: docker build -t ghcr.io/tandem-serve/tandem:0.1.0 .
# The default torch wheel from PyPI carries CUDA, which the workers need on GPU nodes;
# the operator and routers never import it (the import contracts in pyproject.toml).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tandem ./tandem
RUN python -m venv /opt/tandem \
 && /opt/tandem/bin/pip install --upgrade pip \
 && /opt/tandem/bin/pip install .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="tandem" \
      org.opencontainers.image.description="Disaggregated prefill/decode LLM serving on Kubernetes" \
      org.opencontainers.image.source="https://github.com/tandem-serve/tandem" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/tandem /opt/tandem
# A fixed non-root user, matching runAsUser in the chart; /tmp is writable (emptyDir in pods).
RUN useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin tandem
USER 65532
ENV PATH=/opt/tandem/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    TANDEM_HOME=/tmp/tandem
# router HTTP, worker gRPC, worker metrics, operator health and metrics
EXPOSE 8000 50051 9090 8080
ENTRYPOINT ["tandem"]
CMD ["--help"]
