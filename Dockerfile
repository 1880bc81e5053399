# syntax=docker/dockerfile:1
# routeid: one static-ish binary (glibc) on distroless, non-root, no shell.
#
#   docker build -t routeid:dev --build-arg ROUTEID_GIT_COMMIT="$(git rev-parse --short=12 HEAD)" .
#   docker run --rm -p 8080:8080 routeid:dev demo --listen 0.0.0.0:8080 --admin-listen 0.0.0.0:9901
#
# The builder and the runtime share Debian 12 (bookworm), so the binary's glibc matches.
# The binary is optimised with the profile in pgo/ (profile-guided optimisation, made by
# bench/pgo.sh with this Rust version; `--build-arg PGO_RUSTFLAGS=` builds without it).
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
ENV CARGO_TERM_COLOR=never CARGO_INCREMENTAL=0

# Dependencies first, against stub sources: this layer is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
COPY pgo/routeid.profdata.gz ./pgo/
ARG PGO_RUSTFLAGS=-Cprofile-use=/src/pgo/routeid.profdata
ENV RUSTFLAGS=${PGO_RUSTFLAGS}
RUN gunzip pgo/routeid.profdata.gz \
 && mkdir -p src bench \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > bench/derive.rs \
 && echo 'fn main() {}' > bench/pool_size.rs \
 && cargo build --release --locked --bin routeid \
 && rm -rf src bench

# The real sources. touch: their mtimes can be older than the stub build's, and cargo would
# keep the stub binary. There is no .git in the build: `routeid --version` takes the commit
# from ROUTEID_GIT_COMMIT (build.rs).
ARG ROUTEID_GIT_COMMIT=unknown
ENV ROUTEID_GIT_COMMIT=${ROUTEID_GIT_COMMIT}
COPY build.rs ./
COPY src ./src
COPY bench/derive.rs ./bench/derive.rs
COPY bench/pool_size.rs ./bench/pool_size.rs
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin routeid \
 && cp target/release/routeid /routeid \
 && /routeid --version

# distroless/cc: glibc, libgcc, CA certificates, /etc/passwd with nonroot (65532); no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /routeid /usr/local/bin/routeid
USER 65532:65532
# 8080: the proxy; 9901: admin (/healthz, /readyz, /metrics, /balancer-manager).
EXPOSE 8080 9901
ENTRYPOINT ["routeid"]
CMD ["controller"]
