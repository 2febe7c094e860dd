# kvroute (endpoint picker) and kvroute-sim (engine simulator) in one small image.
# Build from the repository root: docker build -t kvroute:local .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY shared shared
COPY ext-proc ext-proc
COPY tests tests
COPY wasm-filter wasm-filter
COPY manifests manifests
RUN cargo build --release --locked -p kvroute -p kvroute-sim

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/kvroute /src/target/release/kvroute-sim /usr/local/bin/
USER 65534:65534
# The entrypoint is the picker; arguments are appended (the inferencepool Helm chart passes
# only arguments, as to the reference picker). Without arguments it serves on its defaults.
ENTRYPOINT ["kvroute"]
