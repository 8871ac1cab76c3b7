# genrec images: a CPU one (most replicas of a deployment need no GPU) and one
# for an NVIDIA GPU (H100/H200, driver >= 580 / CUDA 13.0).
#
#   docker build --target cpu -t genrec:cpu .
#   docker run -p 8080:8080 genrec:cpu                                 # the embedded demo model
#   docker build --target cuda -t genrec:cuda .                        # (the default target)
#   docker run --gpus all -p 8080:8080 genrec:cuda
#   docker run --gpus all -p 8080:8080 -v $PWD/my_model:/model genrec:cuda serve --model /model
#
# The CPU image is a plain `cargo build --release` on Debian 12, run on
# debian:bookworm-slim. The CUDA image builds with scripts/build-cuda.sh (the
# devel image's nvcc 13.0; candle-core patched for dynamic loading, for this
# build only) and runs on the CUDA 13 runtime image (driver libraries come from
# the host via the NVIDIA container toolkit; cuBLAS and cuRAND are in the image).
# deploy/kubernetes runs the CPU image as replicas on one Redis feed.

FROM debian:bookworm AS build-cpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl build-essential pkg-config \
 && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
RUN cargo build --release --locked && cp target/release/genrec /usr/local/bin/genrec

FROM debian:bookworm-slim AS cpu
COPY --from=build-cpu /usr/local/bin/genrec /usr/local/bin/genrec
COPY prompts /app/prompts
WORKDIR /app
ENV GENREC_ADDR=0.0.0.0:8080 \
    GENREC_INTENT_MODEL=none
EXPOSE 8080
ENTRYPOINT ["genrec"]
CMD ["serve"]

FROM nvidia/cuda:13.0.0-devel-ubuntu24.04 AS build-cuda
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl build-essential pkg-config python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
ENV PATH=/root/.cargo/bin:$PATH CUDA_COMPUTE_CAP=90
WORKDIR /src
COPY . .
RUN bash scripts/build-cuda.sh && cp target/cuda/release/genrec /usr/local/bin/genrec

FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04 AS cuda
COPY --from=build-cuda /usr/local/bin/genrec /usr/local/bin/genrec
COPY prompts /app/prompts
WORKDIR /app
ENV GENREC_ADDR=0.0.0.0:8080 \
    GENREC_DEVICE=cuda:0 \
    GENREC_INTENT_MODEL=none \
    LD_LIBRARY_PATH=/usr/local/cuda/lib64
EXPOSE 8080
ENTRYPOINT ["genrec"]
CMD ["serve"]
