# syntax=docker/dockerfile:1

# Build:  docker build --build-arg VERSION=v1.2.3 --build-arg COMMIT=$(git rev-parse HEAD) -t revoker .
#
# The golang images set GOTOOLCHAIN=local, so the builder's Go must be at
# least the version named on go.mod's "go" line: GO_VERSION is that version,
# exactly, so a rebuild of the same commit uses the same compiler. Bump both
# together.
ARG GO_VERSION=1.26.8
# distroless publishes no version tags, only moving ones (nonroot follows
# Debian 12's security updates); a release build pins the one it was tested
# with by digest:
#   --build-arg RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot@sha256:<digest>
# (`crane digest gcr.io/distroless/static-debian12:nonroot` prints it).
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src

# Modules in their own layer: only a change to go.mod or go.sum downloads again.
COPY go.mod go.sum ./
RUN go mod download

COPY . .

ARG VERSION=dev
ARG COMMIT=unknown
# Set by BuildKit for the platform being built; the build itself runs natively.
ARG TARGETOS
ARG TARGETARCH
RUN --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/revoker ./cmd/revoker

FROM ${RUNTIME_IMAGE}
ARG VERSION=dev
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="revoker" \
      org.opencontainers.image.description="Revokes Cloudflare Stream signing keys from NATS JetStream events" \
      org.opencontainers.image.source="https://github.com/revoker/revoker" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}"

COPY --from=build /out/revoker /revoker

# distroless's "nonroot" user, given by number so that Kubernetes'
# runAsNonRoot can verify it without looking the name up.
USER 65532:65532
# /metrics and health; the HTTP ingress when REVOKER_INGRESS_ADDR=:8443.
EXPOSE 8080 8443
ENTRYPOINT ["/revoker"]
CMD ["serve"]
