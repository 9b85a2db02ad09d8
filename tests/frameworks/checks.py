"""PyTorch and CuPy on the fake GPU, driven by tests/frameworks.rs.

One scenario per run: `python checks.py SCENARIO`. Each prints lines the test compares
exactly. At "checkpoint NAME" the scenario waits for a line on stdin, so that the test can
look at the model's ledger, or hibernate and wake it, while the process holds its memory.

Kernels do nothing on the fake GPU: only allocation, copies, memory numbers and errors
are asserted here, never the result of a computation.
"""

import sys

MIB = 1 << 20


def say(*words):
    print(*words, flush=True)


def checkpoint(name):
    say("checkpoint", name)
    sys.stdin.readline()


def torch_basics():
    import torch

    say("available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
    props = torch.cuda.get_device_properties(0)
    say("total_memory", props.total_memory, "capability", f"{props.major}.{props.minor}",
        "sms", props.multi_processor_count)
    say("mem_get_info", *torch.cuda.mem_get_info())
    x = torch.empty(4 * MIB, dtype=torch.uint8, device="cuda")
    say("reserved", torch.cuda.memory_reserved(), "allocated", torch.cuda.memory_allocated())
    # Copies are real on the fake: data goes to the device and comes back.
    host = torch.arange(1000, dtype=torch.float32)
    say("roundtrip", torch.equal(host.cuda().cpu(), host))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        y = torch.empty(MIB, dtype=torch.uint8, device="cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    end.record()
    end.synchronize()
    say("events timed", start.elapsed_time(end) >= 0)
    # Seeding asks the runtime whether the stream is capturing (cuStreamGetCaptureInfo).
    torch.manual_seed(0)
    say("seeded")
    del x, y
    # NVML as PyTorch reads it (nvidia-smi's numbers): the model's own view.
    say("nvml device_memory_used", torch.cuda.device_memory_used(0))


def torch_quota():
    """Tensors of 256 MiB until the quota refuses one; then the cache is given back."""
    import torch

    say("mem_get_info", *torch.cuda.mem_get_info())
    tensors = []
    try:
        while len(tensors) < 16:
            tensors.append(torch.empty(256 * MIB, dtype=torch.uint8, device="cuda"))
        say("no OutOfMemoryError after", len(tensors), "tensors")
    except torch.OutOfMemoryError:
        say("tensors", len(tensors), "then OutOfMemoryError")
    say("reserved", torch.cuda.memory_reserved(), "mem_get_info", *torch.cuda.mem_get_info())
    checkpoint("full")
    del tensors
    torch.cuda.synchronize()
    say("freed: reserved", torch.cuda.memory_reserved())
    torch.cuda.empty_cache()
    say("empty_cache: reserved", torch.cuda.memory_reserved(),
        "mem_get_info", *torch.cuda.mem_get_info())
    checkpoint("empty")


def _share_child(rank, barrier, results):
    import torch

    t = torch.empty(512 * MIB, dtype=torch.uint8, device="cuda")
    barrier.wait()
    results.put((rank, "both hold 512 MiB: mem_get_info %d %d" % torch.cuda.mem_get_info()))
    barrier.wait()
    if rank == 0:
        try:
            torch.empty(2 * MIB, dtype=torch.uint8, device="cuda")
            results.put((rank, "2 MiB more: allocated"))
        except torch.OutOfMemoryError:
            results.put((rank, "2 MiB more: OutOfMemoryError"))
    barrier.wait()
    del t


def torch_share():
    """Two processes of one model (torch.multiprocessing) share its one quota."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    children = [ctx.Process(target=_share_child, args=(r, barrier, results)) for r in range(2)]
    for c in children:
        c.start()
    lines = sorted(results.get(timeout=120) for _ in range(3))
    for c in children:
        c.join(timeout=120)
    for rank, line in lines:
        say("rank", rank, line)
    say("exit codes", *[c.exitcode for c in children])


def torch_hibernate():
    """A tensor's bytes survive hibernate and wake, bit for bit (copies, not kernels)."""
    import torch

    g = torch.Generator().manual_seed(1234)
    host = torch.randint(-(2**31), 2**31 - 1, (16 * MIB,), dtype=torch.int32, generator=g)
    dev = host.cuda()  # 64 MiB
    say("loaded", dev.numel() * 4)
    checkpoint("loaded")
    say("while hibernated: intact", torch.equal(dev.cpu(), host))
    checkpoint("read")
    say("after wake: intact", torch.equal(dev.cpu(), host))


def cupy_checks():
    import cupy

    say("runtime", cupy.cuda.runtime.runtimeGetVersion(), "driver",
        cupy.cuda.runtime.driverGetVersion())
    props = cupy.cuda.runtime.getDeviceProperties(0)
    say("totalGlobalMem", props["totalGlobalMem"], "sms", props["multiProcessorCount"])
    say("memGetInfo", *cupy.cuda.runtime.memGetInfo())
    pool = cupy.get_default_memory_pool()
    a = cupy.empty(256 * MIB, dtype=cupy.uint8)
    say("pool used", pool.used_bytes(), "total", pool.total_bytes())
    import numpy

    host = numpy.arange(1 << 20, dtype=numpy.int32)
    say("roundtrip", bool((cupy.asarray(host).get() == host).all()))
    held = [a]
    try:
        while len(held) < 16:
            held.append(cupy.empty(256 * MIB, dtype=cupy.uint8))
        say("no OutOfMemoryError after", len(held), "arrays")
    except cupy.cuda.memory.OutOfMemoryError:
        say("arrays", len(held), "then OutOfMemoryError")
    say("memGetInfo", *cupy.cuda.runtime.memGetInfo())
    del a, held
    pool.free_all_blocks()
    say("free_all_blocks: pool total", pool.total_bytes(), "memGetInfo",
        *cupy.cuda.runtime.memGetInfo())
    # NVRTC compiles on the CPU; the launch runs nothing on the fake.
    kernel = cupy.RawKernel(r'extern "C" __global__ void fill(int *p) { p[threadIdx.x] = 7; }',
                            "fill")
    out = cupy.zeros(32, dtype=cupy.int32)
    kernel((1,), (32,), (out,))
    cupy.cuda.runtime.deviceSynchronize()
    say("nvrtc compile and launch: ok")


def jax_checks():
    # JAX looks for /dev/nvidia0 (or /dev/nvidiactl, /dev/dxg) before it loads its CUDA
    # plugin; the fake GPU has no device node, so the test says it has one.
    import jax._src.hardware_utils as hardware_utils

    hardware_utils.has_visible_nvidia_gpu = lambda: True
    import jax
    import numpy

    devices = jax.devices()
    say("devices", [d.platform for d in devices])
    host = numpy.arange(1 << 20, dtype=numpy.float32)
    x = jax.device_put(host)
    stats = devices[0].memory_stats()
    # XLA sizes its pool to 75% of what cuMemGetInfo says: of the quota, under the shim.
    say("bytes_limit", stats["bytes_limit"], "bytes_in_use", stats["bytes_in_use"])
    say("roundtrip", bool((numpy.asarray(x) == host).all()))
    say("compiled and launched", (x + 1).shape)
    try:
        jax.device_put(numpy.zeros(3 << 30, dtype=numpy.uint8)).block_until_ready()
        say("3 GiB: allocated")
    except Exception as e:  # jax.errors.JaxRuntimeError
        say("3 GiB:", str(e).split(":")[0])


SCENARIOS = {
    "torch-basics": torch_basics,
    "torch-quota": torch_quota,
    "torch-share": torch_share,
    "torch-hibernate": torch_hibernate,
    "cupy": cupy_checks,
    "jax": jax_checks,
}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]]()
