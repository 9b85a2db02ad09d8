"""PyTorch's allocation path, timed inside the process: N pairs of torch.empty + del of
SIZE bytes on the GPU. With PYTORCH_NO_CUDA_MEMORY_CACHING=1 every pair is a cudaMalloc
and a cudaFree through NVIDIA's runtime, so the shim's cost shows. Prints ns per pair."""

import sys
import time

import torch

n, size = int(sys.argv[1]), int(sys.argv[2])
torch.empty(1, device="cuda")  # initialization is not timed
for _ in range(200):
    x = torch.empty(size, dtype=torch.uint8, device="cuda")
    del x
start = time.perf_counter_ns()
for _ in range(n):
    x = torch.empty(size, dtype=torch.uint8, device="cuda")
    del x
print((time.perf_counter_ns() - start) / n)
