# meshtrust: multi-stage build, small non-root runtime image.
# No protoc needed: the Workload API bindings are checked in (src/workload_api/gen).
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY proto ./proto
COPY benches ./benches
RUN cargo build --release --locked --bin meshtrust && strip target/release/meshtrust

FROM debian:bookworm-slim
# ca-certificates: https_web peers without a ca_file are checked against the system roots.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /var/lib/meshtrust --shell /usr/sbin/nologin meshtrust \
 && mkdir -p /var/lib/meshtrust /var/lib/meshtrust-peers /run/meshtrust \
 && chown meshtrust:meshtrust /var/lib/meshtrust /var/lib/meshtrust-peers /run/meshtrust \
 && chmod 0700 /var/lib/meshtrust && chmod 0755 /run/meshtrust
COPY --from=build /src/target/release/meshtrust /usr/local/bin/meshtrust
USER meshtrust
ENTRYPOINT []
CMD ["meshtrust", "--help"]
