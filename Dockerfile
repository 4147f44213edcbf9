# A small image with berth and the shipped mirror.toml, running as an unprivileged user.
#   docker build -t berth:0.1.0 .
FROM rust:1.85-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && strip target/release/berth

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/berth /usr/local/bin/berth
COPY mirror.toml /etc/berth/mirror.toml
USER 65532:65532
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/berth"]
CMD ["serve", "--config", "/etc/berth/mirror.toml"]
