#!/usr/bin/env python3
"""The front door's test client (stdlib only):

    client.py PORT METHOD PATH [BODY] [--key KEY]

Prints one JSON line per event, each with "t" (seconds since the request was sent):
{"status": CODE, "headers": {NAME: VALUE}}, then {"chunk": TEXT} for each piece of the body as it arrives, then
{"end": true} (or {"error": WHY} if the connection broke)."""
import http.client
import json
import sys
import time

port, method, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rest = sys.argv[4:]
key = None
if "--key" in rest:
    key = rest[rest.index("--key") + 1]
    del rest[rest.index("--key"):rest.index("--key") + 2]
body = rest[0].encode() if rest else None
headers = {"Content-Type": "application/json"}
if key:
    headers["Authorization"] = "Bearer " + key
start = time.monotonic()
emit = lambda **kv: print(json.dumps(dict(kv, t=round(time.monotonic() - start, 3))), flush=True)
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
connection.request(method, path, body=body, headers=headers)
response = connection.getresponse()
emit(status=response.status, headers={k.lower(): v for k, v in response.getheaders()})
try:
    while True:
        piece = response.read1(65536)
        if not piece:
            break
        emit(chunk=piece.decode(errors="replace"))
    emit(end=True)
except Exception as e:  # a connection cut in the middle of the body
    emit(error=str(e))
