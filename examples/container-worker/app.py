"""A summarizer worker: answers POST /task with the first words of `payload.text`.

The server sends `{ "event", "task", "payload" }` and stores the JSON answer as the task's
result. GET /healthz is the health check of worker.yml.
"""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = os.environ.get("MODEL", "small")
# Set from the server's environment through `${env:SUMMARIZER_TOKEN}`; never printed.
API_TOKEN = os.environ.get("API_TOKEN", "")
WORDS = {"small": 5, "large": 20}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.answer(200 if self.path == "/healthz" else 404, {"ok": self.path == "/healthz"})

    def do_POST(self):
        if self.path != "/task":
            return self.answer(404, {"error": "not found"})
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        text = (body.get("payload") or {}).get("text", "")
        words = text.split()[: WORDS.get(MODEL, 5)]
        self.answer(200, {"summary": " ".join(words), "model": MODEL, "authorized": bool(API_TOKEN)})

    def answer(self, status, value):
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
