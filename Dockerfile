# zen-server container image.
#
#   docker build -t zen-server --build-arg BUILD_COMMIT="$(git rev-parse --short=12 HEAD)" .
#   docker run --rm -p 1060:1060 zen-server
#
# The image runs zen-server as a non-root user with the settings in
# /etc/zen-server/zen-server.toml (from deploy/docker/zen-server.toml: every interface, port
# 1060, logs on standard output). Mount your own file there to change them; ZEN_* environment
# variables and command-line flags still win over the file, as everywhere. SIGTERM (docker stop)
# drains: clients get the answers to what they asked, then the server exits 0.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own that only Cargo.toml and Cargo.lock invalidate:
# compile them against empty stand-ins of the crate's targets, then drop the stand-ins.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin/zen-client tests/it \
    && echo 'fn main() {}' > src/bin/zen-server.rs \
    && echo 'fn main() {}' > src/bin/zen-client/main.rs \
    && echo 'fn main() {}' > src/bin/plain-tokio.rs \
    && echo 'fn main() {}' > src/bin/plain-actix.rs \
    && touch src/lib.rs tests/it/main.rs \
    && cargo build --profile dist --locked --bins \
    && rm -rf src tests
# The commit zen_build_info reports (the context has no .git): --build-arg BUILD_COMMIT=...
# Declared after the dependencies' layer, which it would otherwise invalidate.
ARG BUILD_COMMIT
COPY build.rs ./
COPY config config
COPY src src
COPY tests tests
# The stand-ins were built after these files were written: make the real ones newer.
RUN find src -name '*.rs' -exec touch {} + \
    && cargo build --profile dist --locked --bins

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/dist/zen-server /src/target/dist/zen-client /usr/local/bin/
COPY deploy/docker/zen-server.toml /etc/zen-server/zen-server.toml
# Both binaries read the same settings: the health check probes the address the server
# listens on, whatever file, variable or mount set it.
ENV ZEN_CONFIG=/etc/zen-server/zen-server.toml
# distroless "nonroot"; numeric so that Kubernetes can check runAsNonRoot.
USER 65532:65532
EXPOSE 1060
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/zen-client", "probe"]
ENTRYPOINT ["/usr/local/bin/zen-server"]
