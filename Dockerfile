# syntax=docker/dockerfile:1
# visa-proxy: release binary + verified model files, running as a non-root user.
#   docker build -t visa-proxy .
#   docker run -p 8080:8080 -e VISA_ADMIN_KEY=... visa-proxy

# --- build the binary -------------------------------------------------------------------
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
# A portable CPU level for the image (local builds use target-cpu=native via .cargo/config.toml).
ENV RUSTFLAGS="-C target-cpu=x86-64-v3" \
    CARGO_TARGET_DIR=/src/target
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY benches ./benches
COPY examples ./examples
COPY tests ./tests
RUN cargo build --release --locked --bin visa-proxy \
 && strip target/release/visa-proxy

# --- fetch and verify the model files ---------------------------------------------------
FROM python:3.11-slim-bookworm AS models
WORKDIR /src
COPY scripts/fetch-models.sh ./scripts/
RUN bash scripts/fetch-models.sh

# --- runtime ----------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin visa
WORKDIR /app
COPY --from=build /src/target/release/visa-proxy /usr/local/bin/visa-proxy
COPY --from=models /src/models ./models
COPY config.toml ./config.toml
# The image never accepts a published key: its demo tenant takes its key from VISA_DEMO_KEY
# (unset: the demo tenant has no key; mount a config of your own for real tenants).
RUN sed -i 's/^api_key_sha256 = \["80799cd2c22509aa4c3c568e1fec9476717b1d2c3172c2596374e09b01336ae6"\]$/api_key_env = "VISA_DEMO_KEY"/' config.toml \
 && grep -q '^api_key_env = "VISA_DEMO_KEY"$' config.toml
COPY static ./static
COPY openapi ./openapi
COPY assets ./assets
# data/ holds the profile database (profiles.database); mount a volume there to keep it.
RUN mkdir -p /app/data && chown -R visa:visa /app
USER 10001:10001
ENV VISA_LISTEN=0.0.0.0:8080 \
    VISA_CONFIG=/app/config.toml
VOLUME ["/app/data"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["visa-proxy", "healthcheck", "--url", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["visa-proxy"]
CMD ["serve"]
