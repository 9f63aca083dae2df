# pgsidecar container image: a multi-stage build of the release binary into a small runtime
# image that runs as a non-root user.
#
#   docker build -t pgsidecar .
#   docker run -v $PWD/pgsidecar.toml:/etc/pgsidecar/pgsidecar.toml:ro -p 6432:6432 -p 9930:9930 pgsidecar
#
# In a pod, run it beside the application and point the application's database URL at
# 127.0.0.1:6432; scrape :9930/metrics, probe :9930/healthz and :9930/readyz.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so editing the sources does not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked --bin pgsidecar \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin pgsidecar

# glibc and CA certificates, no shell; runs as uid 65532 ("nonroot", numeric so that
# Kubernetes' runAsNonRoot can verify it).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/pgsidecar /usr/local/bin/pgsidecar
USER 65532:65532
# Inside the container, listen on all of its interfaces (the pod's network namespace).
ENV PGSIDECAR_LISTEN=0.0.0.0:6432 \
    PGSIDECAR_METRICS_LISTEN=0.0.0.0:9930
EXPOSE 6432 9930
ENTRYPOINT ["/usr/local/bin/pgsidecar"]
CMD ["run", "--config", "/etc/pgsidecar/pgsidecar.toml"]
