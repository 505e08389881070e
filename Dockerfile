# syntax=docker/dockerfile:1
# The Latchkey operator image: a static musl binary on distroless, running as a non-root user.
#
# NOTE: no image has been built from this file in the project's development environment (it has no Docker engine
# or other image builder); the binary it builds is the one `cargo build --release` makes and the tests run.
#   docker build -t ghcr.io/latchkey-dev/latchkey:0.1.0 .
# The Helm chart runs it with a read-only root filesystem, no capabilities and UID 65532 (distroless "nonroot").

FROM rust:1.89-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools cmake clang \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
# Dependencies first, so that a change to src/ does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --release --locked --target x86_64-unknown-linux-musl \
 && rm -rf src
COPY src ./src
COPY crds ./crds
# aws-lc-rs (rustls' crypto provider) builds its C code with musl-gcc here; the result is fully static.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/latchkey /latchkey \
 && /latchkey crds > /dev/null

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="latchkey" \
      org.opencontainers.image.description="Kubernetes operator for embedded connections" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/latchkey-dev/latchkey"
COPY --from=build /latchkey /usr/local/bin/latchkey
USER 65532:65532
# 8080: connect server (end users); 9090: /metrics, /healthz, /readyz.
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/latchkey"]
CMD ["run"]
