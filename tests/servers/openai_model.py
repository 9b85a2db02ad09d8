#!/usr/bin/env python3
"""A small OpenAI-compatible model server for the front door's tests (stdlib only).

    openai_model.py --port PORT --name NAME [--delay SECONDS] [--gpu-bytes N] [--work-ms MS]

It loads like an engine: with --gpu-bytes, it allocates N bytes of GPU memory through the
CUDA driver (libcuda.so.1, cuMemAlloc: under cuvisor's shim, charged to its model's quota)
and brings them onto the device (cuMemPrefetchAsync: no host page is written, so they cost
the host nothing), and every request needs them there again, as a kernel reading its
weights does (a prefetch: free while they are resident, over the link when they were
evicted or hibernated). It listens on 127.0.0.1:PORT after DELAY seconds, then (each
answer after --work-ms of "compute"):

    GET  /health                 200 "ok"
    POST /v1/chat/completions    a completion naming this server; with "stream": true,
    POST /v1/completions         server-sent events: "chunks" events (default 3), one
                                 every "interval" seconds (default 0.2), then [DONE]
    POST /v1/embeddings          a one-number embedding
    any /v1 body with "die": true  the server exits at once, answering nothing
    anything else                {"path", "query", "method", "body_bytes"} (the prefix route)

Every JSON answer carries "served_by" (NAME) and "pid", so tests can tell instances apart,
and "headers": the request's headers as the server received them (names in lower case).
"""
import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

args = argparse.ArgumentParser()
args.add_argument("--port", type=int, default=int(os.environ.get("PORT", "0")))
args.add_argument("--name", default="model")
args.add_argument("--delay", type=float, default=0.0)
args.add_argument("--gpu-bytes", type=int, default=0)
args.add_argument("--work-ms", type=float, default=0.0)
opts = args.parse_args()


class Weights:
    """n bytes of GPU memory, allocated and brought onto the device as an engine loads its
    weights; `use()` brings them back before a request's compute."""

    def __init__(self, n):
        import ctypes
        self.ctypes, self.n = ctypes, n
        self.cu = cu = ctypes.CDLL("libcuda.so.1")
        self.device, self.context, self.pointer = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
        self.call("cuInit", cu.cuInit, 0)
        self.call("cuDeviceGet", cu.cuDeviceGet, ctypes.byref(self.device), 0)
        # The device's primary context, as PyTorch, JAX and vLLM use (and as cuvisor's
        # hibernation needs: a context the shim did not retain cannot be moved).
        self.call("cuDevicePrimaryCtxRetain", cu.cuDevicePrimaryCtxRetain,
                  ctypes.byref(self.context), self.device)
        self.call("cuCtxSetCurrent", cu.cuCtxSetCurrent, self.context)
        self.call("cuMemAlloc", cu.cuMemAlloc_v2, ctypes.byref(self.pointer), ctypes.c_size_t(n))
        self.use()
        print("loaded %d bytes on the GPU" % n, flush=True)

    def call(self, name, f, *args):
        code = f(*args)
        if code != 0:
            print("%s -> %d" % (name, code), file=sys.stderr, flush=True)
            os._exit(1)

    def use(self):
        c = self.ctypes
        self.call("cuCtxSetCurrent", self.cu.cuCtxSetCurrent, self.context)
        self.call("cuMemPrefetchAsync", self.cu.cuMemPrefetchAsync, self.pointer,
                  c.c_size_t(self.n), self.device, c.c_void_p(0))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # a streamed body ends when the connection closes

    def log_message(self, *a):
        pass

    def reply(self, code, value):
        value["headers"] = {k.lower(): v for k, v in self.headers.items()}
        body = json.dumps(value).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            body = b"ok"
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(body)
            return
        self.echo(b"")

    def echo(self, body):
        url = urlsplit(self.path)
        self.reply(200, {"path": url.path, "query": url.query, "method": self.command,
                         "body_bytes": len(body), "served_by": opts.name, "pid": os.getpid()})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if not self.path.startswith("/v1/"):
            self.echo(body)
            return
        if self.path == "/v1/audio/transcriptions":  # a multipart upload, not JSON
            self.reply(200, {"text": "transcribed by " + opts.name, "served_by": opts.name,
                             "body_bytes": len(body)})
            return
        request = json.loads(body or b"{}")
        if request.get("die"):
            os._exit(3)
        if weights:
            weights.use()
        if opts.work_ms:
            time.sleep(opts.work_ms / 1000.0)
        if self.path == "/v1/embeddings":
            self.reply(200, {"object": "list", "data": [{"embedding": [0.5], "index": 0}],
                             "model": request.get("model"), "served_by": opts.name, "pid": os.getpid()})
            return
        if not request.get("stream"):
            self.reply(200, {"object": "chat.completion", "model": request.get("model"),
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from " + opts.name}}],
                             "served_by": opts.name, "pid": os.getpid()})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            for i in range(int(request.get("chunks", 3))):
                event = {"choices": [{"index": 0, "delta": {"content": "chunk %d" % i}}],
                         "served_by": opts.name, "pid": os.getpid()}
                self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                self.wfile.flush()
                time.sleep(float(request.get("interval", 0.2)))
        except (BrokenPipeError, ConnectionResetError):
            print("stream cancelled after %d chunks" % i, file=sys.stderr, flush=True)
            return
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


weights = Weights(opts.gpu_bytes) if opts.gpu_bytes else None
time.sleep(opts.delay)
server = ThreadingHTTPServer(("127.0.0.1", opts.port), Handler)
print("listening on %d (pid %d)" % (server.server_address[1], os.getpid()), flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    sys.exit(0)
