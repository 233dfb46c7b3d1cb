# The FOSPS connector engine image: `engine serve` on definitions mounted at
# /etc/engine/connectors.d (a ConfigMap in Kubernetes; the shipped ones by default).
# The build step is the command CI runs: cargo build --locked --release -p engine

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
COPY engine ./engine
RUN cargo build --locked --release -p engine

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=20250419~deb12u2 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/engine --create-home engine
COPY --from=build /src/target/release/engine /usr/local/bin/engine
COPY connectors.d /etc/engine/connectors.d
USER 10001
WORKDIR /var/lib/engine
ENV ENGINE_LISTEN=0.0.0.0:8080 \
    ENGINE_STATE_DIR=/var/lib/engine/state \
    ENGINE_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --retries=3 CMD ["engine", "probe", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["engine", "serve"]
CMD ["/etc/engine/connectors.d"]
