#!/usr/bin/env python3
"""A private package index for the tests (PEP 503, stdlib only), behind HTTP Basic auth.

    private_index.py PORT_FILE WHEEL_DIR USER PASSWORD

Serves the wheels of WHEEL_DIR as /simple/NAME/ and /files/WHEEL on a free loopback port,
which it writes to PORT_FILE; every request without the credentials gets 401.
"""
import base64
import hashlib
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port_file, wheels, user, password = sys.argv[1:5]
expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def send(self, code, body, content_type="text/html"):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if code == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="private"')
        self.end_headers()
        if not getattr(self, "head_only", False):
            self.wfile.write(body)

    def do_HEAD(self):
        self.head_only = True
        self.do_GET()

    def do_GET(self):
        if self.headers.get("Authorization") != expected:
            self.send(401, b"credentials needed")
            return
        parts = [p for p in self.path.split("/") if p]
        if len(parts) == 2 and parts[0] == "simple":
            name = parts[1].lower().replace("_", "-")
            links = []
            for w in sorted(os.listdir(wheels)):
                if w.lower().startswith(name.replace("-", "_") + "-") or w.lower().startswith(name + "-"):
                    digest = hashlib.sha256(open(os.path.join(wheels, w), "rb").read()).hexdigest()
                    links.append(f'<a href="/files/{w}#sha256={digest}">{w}</a>')
            self.send(200, ("<html><body>" + "".join(links) + "</body></html>").encode())
        elif len(parts) == 2 and parts[0] == "files":
            self.send(200, open(os.path.join(wheels, parts[1]), "rb").read(), "application/octet-stream")
        else:
            self.send(404, b"not found")


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
