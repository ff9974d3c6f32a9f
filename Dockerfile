# The d23_pipeline code location as an image, for the "Scaling out" setups in README.md: it serves
# the definitions over gRPC on port 4000, and run launchers start runs from the same image.
#
# It has never been built: the machines this project is developed and tested on have no Docker.
# The command it runs, `dagster code-server start ... -m d23_pipeline.definitions`, was run there
# outside a container, with the webserver loading it through a `grpc_server` workspace entry.
FROM python:3.11-slim

WORKDIR /opt/d23
COPY pyproject.toml constraints.txt README.md workspace.yaml ./
COPY d23_pipeline ./d23_pipeline
# The pinned set the tests ran with. A run launcher adds its own package, pinned to the same
# Dagster release, e.g. dagster-docker==0.29.27 or dagster-k8s==0.29.27 (see README).
RUN pip install --no-cache-dir --disable-pip-version-check -c constraints.txt . \
    && useradd --create-home --uid 10023 d23

USER d23
# The instance file and the DAGSTER_PG_* / D23_* variables come from the deployment (a mounted
# $DAGSTER_HOME/dagster.yaml, secrets from the orchestrator), never from the image.
ENV DAGSTER_HOME=/opt/dagster/home \
    D23_DATA_DIR=/var/lib/d23/data \
    PYTHONUNBUFFERED=1
EXPOSE 4000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "d23_pipeline.definitions"]
