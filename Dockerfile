# Build a static vitalproxy binary and run it as a non-root user in a
# distroless image.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
    -o /out/vitalproxy ./cmd/vitalproxy

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/vitalproxy /usr/local/bin/vitalproxy
# Inside a container the proxy must listen beyond loopback.
ENV VITALPROXY_LISTEN=0.0.0.0:6432 VITALPROXY_METRICS_LISTEN=0.0.0.0:9930
USER nonroot:nonroot
EXPOSE 6432 9930
ENTRYPOINT ["/usr/local/bin/vitalproxy"]
CMD ["serve"]
