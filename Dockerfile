# NPR Engine on the official SGLang image of the pinned release (CUDA, sgl-kernel,
# flashinfer included). Since 0.5.20 SGLang's images are CUDA 13 only (v0.5.19-cu129
# was the last CUDA 12 tag); the -cu130 tag names that build explicitly. The host needs
# an NVIDIA driver that supports CUDA 13 (R580 or newer).
# Build: docker build -t npr-engine .
# Run:   docker run --gpus all -p 30000:30000 -v /models:/models npr-engine \
#            --model /models/NPR-4B --tag-schema npr
FROM lmsysorg/sglang:v0.5.23-cu130

WORKDIR /opt/npr-engine
COPY . .
RUN NPR_ALLOW_SYSTEM_INSTALL=1 PYTHON=python3 ./install.sh gpu

EXPOSE 30000
ENTRYPOINT ["python3", "/opt/npr-engine/server.py", "--profile", "gpu", "--host", "0.0.0.0", "--port", "30000"]
