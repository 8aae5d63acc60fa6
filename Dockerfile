# The operator image: one binary for the receiver, the controller and the
# gateway (the chart runs each as its own Deployment), non-root.
#
#   docker build -t claude-operator .
#
# Debian slim rather than distroless: the gateway checks what a push really
# changes with git itself (index-pack, rev-list, diff-tree), so the image
# carries git. The chart mounts an emptyDir at /tmp for that work and keeps
# the root filesystem read-only.
#
# The base images are build arguments so that a machine without a registry
# can build from bases it made itself (e2e/images.sh, docs/images.md); the
# defaults are the public images.
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
# The cargo profile of the binary: release for a shipped image; the test
# images use Cargo.toml's cheaper `test-image` profile (docs/images.md).
ARG CARGO_PROFILE=release

FROM ${RUST_IMAGE} AS build
ARG CARGO_PROFILE
WORKDIR /src
COPY . .
# Copied out of target/ so that a build may mount target/ as a cache.
RUN cargo build --profile "$CARGO_PROFILE" --locked --bin claude-operator \
 && cp "target/$CARGO_PROFILE/claude-operator" /claude-operator

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --user-group --no-create-home --home-dir /nonexistent claude-operator
COPY --from=build /claude-operator /usr/local/bin/claude-operator
USER 65532:65532
EXPOSE 8080 8081 9090
ENTRYPOINT ["/usr/local/bin/claude-operator"]
CMD ["run"]
