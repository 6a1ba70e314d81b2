# zen-server container image: build in a Rust image, run in a slim Debian one as a non-root user.
#   docker build -t zen-server .
#   docker run --rm -p 1060:1060 zen-server
# Settings come from ZEN_* environment variables or a file mounted at /etc/zen-server/zen-server.toml
# with ZEN_CONFIG=/etc/zen-server/zen-server.toml.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY config config
COPY src src
COPY tests tests
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin zen
COPY --from=build /src/target/release/zen-server /src/target/release/zen-client /usr/local/bin/
USER zen
# In a container the server must listen on every interface; the built-in default is loopback only.
ENV ZEN_SERVER__LISTEN=0.0.0.0:1060
EXPOSE 1060
HEALTHCHECK --interval=10s --timeout=3s CMD ["zen-client", "probe", "--addr", "127.0.0.1:1060", "--timeout", "2"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["zen-server"]
