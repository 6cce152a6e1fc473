# eventflow's container image.
#   docker build -t eventflow:0.1.0 .
# Build stage: the Rust toolchain; run stage: distroless (glibc, CA certificates, no shell),
# as the non-root user 65532. The root file system can be read-only: eventflow writes only
# under /var/lib/eventflow (the state database and SQLite files), a volume in Kubernetes.

FROM docker.io/library/rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --locked --release -p eventflow \
 && install -D -m 0755 target/release/eventflow /out/usr/local/bin/eventflow \
 && install -D -m 0644 deploy/image/pipeline.yaml /out/etc/eventflow/pipeline.yaml \
 && install -d -o 65532 -g 65532 -m 0750 /out/var/lib/eventflow

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="eventflow" \
      org.opencontainers.image.description="Turns Kubernetes Events into actions through a declarative, hot-reloadable pipeline" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/usr/local/bin/eventflow /usr/local/bin/eventflow
COPY --from=build /out/etc/eventflow/pipeline.yaml /etc/eventflow/pipeline.yaml
COPY --from=build --chown=65532:65532 /out/var/lib/eventflow /var/lib/eventflow
USER 65532:65532
WORKDIR /var/lib/eventflow
EXPOSE 9464
ENTRYPOINT ["eventflow"]
CMD ["run", "/etc/eventflow/pipeline.yaml"]
