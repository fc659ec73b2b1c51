# meshtrust: one non-root runtime stage, filled two ways.
#
#   docker compose up --build     Users (with an image registry): the binary is built from source
#                                 in the Rust image (stage `build`) and copied into the runtime
#                                 stage on debian:bookworm-slim (the last stage, the default).
#   .ci/docker-image.sh           No registry (CI, developers here): `--target runtime` alone, on a
#                                 debian:bookworm-slim made locally by .ci/docker-base.sh, then the
#                                 binary built on the host copied in (.ci/prebuilt.Dockerfile).
#
# `runtime` comes first: the classic builder builds every stage up to its target, so
# `--target runtime` needs neither the Rust image nor the sources.
# No protoc needed: the Workload API bindings are checked in (src/workload_api/gen).
# Nothing secret is in the image: the CA keys are made at run time in the data_dir volume.

FROM debian:bookworm-slim AS runtime
# ca-certificates: https_web peers without a ca_file are checked against the system roots.
# Installed unless the base image has them already (the locally made base does), so that
# this stage downloads nothing there.
RUN if [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
      apt-get update && apt-get install -y --no-install-recommends ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi
RUN useradd --system --uid 10001 --home-dir /var/lib/meshtrust --shell /usr/sbin/nologin meshtrust \
 && mkdir -p /var/lib/meshtrust /var/lib/meshtrust-peers /run/meshtrust \
 && chown meshtrust:meshtrust /var/lib/meshtrust /var/lib/meshtrust-peers /run/meshtrust \
 && chmod 0700 /var/lib/meshtrust && chmod 0755 /run/meshtrust
USER meshtrust
ENTRYPOINT []
CMD ["meshtrust", "--help"]

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY proto ./proto
COPY benches ./benches
RUN cargo build --release --locked --bin meshtrust && strip target/release/meshtrust

FROM runtime
COPY --from=build /src/target/release/meshtrust /usr/local/bin/meshtrust
