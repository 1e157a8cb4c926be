# syntax=docker/dockerfile:1.7
# One image with every chatpipe binary:
#   chatpipe-ingest, chatpipe-processor, chatpipe-api, chatpipe-delivery, chatpipe-operator,
#   chatpipe-admin, chatpipe-loadgen
# Pods pick theirs with `command:` (the operator sets it for each component).
#
#   docker build -t chatpipe:dev .

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# --- build ------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
# librdkafka is compiled from source by rdkafka-sys (bundled, never Debian's
# librdkafka, whose ApiVersions parsing fails against Tansu); the rust image
# already has the C toolchain, make, perl and zlib headers it needs.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --workspace \
        --bin chatpipe-ingest \
        --bin chatpipe-processor \
        --bin chatpipe-api \
        --bin chatpipe-delivery \
        --bin chatpipe-operator \
        --bin chatpipe-admin \
        --bin chatpipe-loadgen \
 && mkdir -p /out \
 && for b in chatpipe-ingest chatpipe-processor chatpipe-api chatpipe-delivery chatpipe-operator chatpipe-admin chatpipe-loadgen; do \
        cp "target/release/$b" /out/; \
    done

# --- runtime ----------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates for TLS endpoints (kube API via rustls uses its own roots,
# but Postgres/Kafka TLS setups may not); zlib is already in the base image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 chatpipe \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin chatpipe
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
# Services bind all interfaces in a container; every listener is CHATPIPE_LISTEN.
ENV CHATPIPE_LOG_FORMAT=json
EXPOSE 8080 8081 8082
# No default service: the operator (and skaffold/compose users) set the command.
ENTRYPOINT []
CMD ["chatpipe-operator", "--help"]
LABEL org.opencontainers.image.title="chatpipe" \
      org.opencontainers.image.description="chatpipe: chat webhooks to conversations (ingest, processor, api, operator, admin, loadgen)" \
      org.opencontainers.image.licenses="Apache-2.0"
