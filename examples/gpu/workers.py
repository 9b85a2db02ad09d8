#!/usr/bin/env python3
"""The real-GPU kit's framework workers, one process each, started by kit.py (under
`cuvisor exec` when the shim is wanted). Each prints JSON lines on stdout.

  alloc FRAMEWORK --chunk B --limit B   allocate chunks until the framework's own OOM error
  hold --bytes B --seed S               hold B bytes of tensors and a small transformer with
                                        random weights; then, one command per stdin line:
                                        "work N" (N rounds, checked against the results of
                                        the first round), "prefetch" (every held byte back
                                        to the GPU), "quit"
  touch --bytes B                       allocate and write B bytes (evicts other models'
                                        managed memory), then wait for stdin to close
  ballast --bytes B                     plain device memory the others cannot have
  physical                              free and total device memory, as the driver says
  h2d --bytes B                         host-to-device copy time from pinned memory

FRAMEWORK: torch (PYTORCH_CUDA_ALLOC_CONF chooses the allocator), cupy, jax.
"""
import argparse
import json
import sys
import time

MiB = 1 << 20


def emit(**fields):
    print(json.dumps(fields), flush=True)


def nvml_memory():
    """NVML's view from inside this process (pynvml reaches it through ctypes/dlsym)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
        return {"total": info.total, "used": info.used, "free": info.free}
    except Exception as e:  # recorded, not hidden
        return {"error": f"{type(e).__name__}: {e}"}


def alloc(framework, chunk, limit):
    held, allocated, error = [], 0, None
    if framework == "torch":
        import torch

        free, total = torch.cuda.mem_get_info()
        query = {"api": "torch.cuda.mem_get_info", "free": free, "total": total}
        oom = torch.cuda.OutOfMemoryError
        make = lambda: torch.empty(chunk, dtype=torch.uint8, device="cuda")
    elif framework == "cupy":
        import cupy

        free, total = cupy.cuda.runtime.memGetInfo()
        query = {"api": "cupy.cuda.runtime.memGetInfo", "free": free, "total": total}
        oom = cupy.cuda.memory.OutOfMemoryError
        make = lambda: cupy.empty(chunk, dtype=cupy.uint8)
    elif framework == "jax":
        import jax
        import jax.numpy as jnp

        stats = jax.devices()[0].memory_stats() or {}
        query = {"api": "jax memory_stats", "bytes_limit": stats.get("bytes_limit"),
                 "bytes_reserved": stats.get("bytes_reserved")}
        oom = Exception  # XlaRuntimeError / JaxRuntimeError: checked by its message below
        make = lambda: jnp.ones((chunk,), dtype=jnp.uint8).block_until_ready()
    else:
        raise SystemExit(f"unknown framework {framework}")
    while allocated < limit:
        try:
            held.append(make())
            allocated += chunk
        except oom as e:
            error = {"type": f"{type(e).__module__}.{type(e).__name__}",
                     "message": str(e).splitlines()[0][:300] if str(e) else ""}
            break
    emit(framework=framework, query=query, nvml=nvml_memory(), chunk=chunk,
         allocated=allocated, error=error)


class Held:
    """A model stand-in: big tensors (its weights) and a small transformer, with the
    results of the first round as the reference every later round must match."""

    def __init__(self, nbytes, seed):
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self.torch = torch
        g = torch.Generator(device="cuda").manual_seed(seed)
        rows, cols = 8192, 16384  # 256 MiB of fp16 each
        self.weights = [torch.randn(rows, cols, dtype=torch.float16, device="cuda", generator=g)
                        for _ in range(max(1, nbytes // (rows * cols * 2)))]
        self.vector = torch.randn(cols, dtype=torch.float16, device="cuda", generator=g)
        torch.manual_seed(seed)
        layer = torch.nn.TransformerEncoderLayer(d_model=1024, nhead=16, dim_feedforward=4096,
                                                 batch_first=True, dropout=0.0)
        self.model = torch.nn.TransformerEncoder(layer, num_layers=4).cuda().eval()
        self.tokens = torch.randn(8, 256, 1024, device="cuda", generator=g)
        self.reference = self.round()

    def round(self):
        with self.torch.no_grad():
            sums = self.torch.stack([(w @ self.vector).float().sum() for w in self.weights])
            out = self.model(self.tokens)
        self.torch.cuda.synchronize()
        return sums.cpu(), out.cpu()

    def work(self, rounds):
        t = time.perf_counter()
        ok = True
        for _ in range(rounds):
            sums, out = self.round()
            ok &= bool(self.torch.allclose(sums, self.reference[0], rtol=1e-3, atol=1e-2))
            ok &= bool(self.torch.allclose(out, self.reference[1], rtol=1e-4, atol=1e-5))
        return ok, time.perf_counter() - t

    def prefetch(self):
        """cuMemPrefetchAsync_v2 (CUDA 12.2 ABI) of every held tensor to device 0."""
        import ctypes

        class Location(ctypes.Structure):  # CUmemLocation
            _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]

        cuda = ctypes.CDLL("libcuda.so.1")
        fn = cuda.cuMemPrefetchAsync_v2
        fn.argtypes = [ctypes.c_uint64, ctypes.c_size_t, Location, ctypes.c_uint, ctypes.c_void_p]
        device = Location(1, 0)  # CU_MEM_LOCATION_TYPE_DEVICE, ordinal 0
        t = time.perf_counter()
        tensors = self.weights + [p for p in self.model.parameters()]
        rc = [fn(x.data_ptr(), x.numel() * x.element_size(), device, 0, None) for x in tensors]
        self.torch.cuda.synchronize()
        return sorted(set(rc)), time.perf_counter() - t


def hold(nbytes, seed):
    import torch

    try:
        held = Held(nbytes, seed)
    except Exception as e:  # the baseline without the shim is expected to end here
        oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()
        emit(ready=False, out_of_memory=oom,
             error=f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}")
        return 3
    emit(ready=True, bytes=sum(w.numel() * 2 for w in held.weights))
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "work":
            ok, seconds = held.work(int(cmd[1]))
            emit(cmd="work", rounds=int(cmd[1]), ok=ok, seconds=seconds)
        elif cmd[0] == "prefetch":
            rc, seconds = held.prefetch()
            emit(cmd="prefetch", rc=rc, seconds=seconds)
    return 0


def touch(nbytes):
    import torch

    t = time.perf_counter()
    x = torch.ones(nbytes, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    emit(ready=True, bytes=x.numel(), seconds=time.perf_counter() - t)
    sys.stdin.read()


def ballast(nbytes):
    import torch

    x = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    emit(ready=True, bytes=x.numel())
    sys.stdin.read()


def physical():
    import torch

    free, total = torch.cuda.mem_get_info()
    emit(free=free, total=total, name=torch.cuda.get_device_name(0))


def h2d(nbytes):
    import torch

    host = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    emit(bytes=nbytes, seconds=min(times), all_seconds=times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what")
    p.add_argument("framework", nargs="?")
    p.add_argument("--chunk", type=int, default=256 * MiB)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--bytes", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.what == "alloc":
        return alloc(a.framework, a.chunk, a.limit)
    if a.what == "hold":
        return hold(a.bytes, a.seed)
    if a.what == "touch":
        return touch(a.bytes)
    if a.what == "ballast":
        return ballast(a.bytes)
    if a.what == "physical":
        return physical()
    if a.what == "h2d":
        return h2d(a.bytes)
    raise SystemExit(f"unknown worker {a.what}")


if __name__ == "__main__":
    sys.exit(main() or 0)
