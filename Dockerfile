# The operator image (controller and webhook receiver): one static binary on
# distroless, non-root.
#
#   docker build -t claude-operator .

FROM rust:1-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
# rustls everywhere, so a static musl build needs no OpenSSL.
RUN cargo build --release --locked --bin claude-operator \
 && cp target/release/claude-operator /claude-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /claude-operator /usr/local/bin/claude-operator
# distroless' nonroot user (65532); the chart sets a read-only root filesystem.
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/claude-operator"]
CMD ["run"]
