# genrec on an NVIDIA GPU (H100/H200, driver >= 580 / CUDA 13.0).
#
#   docker build -t genrec:cuda .
#   docker run --gpus all -p 8080:8080 genrec:cuda                     # the embedded demo model
#   docker run --gpus all -p 8080:8080 -v $PWD/my_model:/model genrec:cuda serve --model /model
#
# Stage 1 builds the `cuda` binary with scripts/build-cuda.sh (the devel image's
# nvcc 13.0; candle-core patched for dynamic loading, for this build only).
# Stage 2 is the CUDA 13 runtime image (driver libraries come from the host via
# the NVIDIA container toolkit; cuBLAS and cuRAND are in the image).

FROM nvidia/cuda:13.0.0-devel-ubuntu24.04 AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl build-essential pkg-config python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
ENV PATH=/root/.cargo/bin:$PATH CUDA_COMPUTE_CAP=90
WORKDIR /src
COPY . .
RUN bash scripts/build-cuda.sh && cp target/cuda/release/genrec /usr/local/bin/genrec

FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04
COPY --from=build /usr/local/bin/genrec /usr/local/bin/genrec
COPY prompts /app/prompts
WORKDIR /app
ENV GENREC_ADDR=0.0.0.0:8080 \
    GENREC_DEVICE=cuda:0 \
    GENREC_INTENT_MODEL=none \
    LD_LIBRARY_PATH=/usr/local/cuda/lib64
EXPOSE 8080
ENTRYPOINT ["genrec"]
CMD ["serve"]
