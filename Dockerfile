# keygate container image: multi-stage, release build, distroless runtime, non-root.
#
#   docker build -t keygate .
#   docker run -p 8080:8080 -p 127.0.0.1:9090:9090 -v keygate-data:/var/lib/keygate keygate
#
# Config: /etc/keygate/keygate.toml (mount your own over it, or the whole directory).
# Data:   /var/lib/keygate (embedded store, bootstrap admin key file).
# Reload: docker kill --signal=HUP <container>

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked --bin keygate \
    && rm -rf src
COPY src ./src
# The real sources are newer than the stub's build outputs.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin keygate \
    && mkdir -p /out/data \
    && cp target/release/keygate /out/keygate

# distroless/cc: glibc, libgcc, CA certificates (for https upstreams), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/keygate /usr/local/bin/keygate
COPY config/docker.toml /etc/keygate/keygate.toml
# The data directory must exist and belong to the runtime user before it is a volume.
COPY --from=build --chown=65532:65532 /out/data /var/lib/keygate
WORKDIR /var/lib/keygate
VOLUME ["/etc/keygate", "/var/lib/keygate"]
USER 65532:65532
EXPOSE 8080 9090
# No curl in the image: the binary probes its own admin listener's /healthz.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/keygate", "healthcheck", "--config", "/etc/keygate/keygate.toml"]
ENTRYPOINT ["/usr/local/bin/keygate"]
CMD ["serve", "--config", "/etc/keygate/keygate.toml"]
