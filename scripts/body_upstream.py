#!/usr/bin/env python3
"""A small HTTP/1.1 upstream for scripts/hostile.sh that reads every request body to
its end before answering (nginx's `return 200` answers at once and never reads it, so
a stalled or broken body would never be noticed behind it).

Usage: body_upstream.py PORT LOG

Answers `200 ok <n>` where n is the number of body bytes read (Content-Length or
chunked); appends `METHOD PATH n` to LOG per request. Keep-alive; one thread per
connection; 127.0.0.1 only.
"""
import http.server
import sys

PORT, LOG = int(sys.argv[1]), sys.argv[2]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def line(self):
        line = self.rfile.readline()
        if not line.endswith(b"\n"):
            raise EOFError("connection closed inside the body")
        return line

    def exactly(self, n):
        data = self.rfile.read(n)
        if len(data) != n:
            raise EOFError("connection closed inside the body")
        return data

    def body_length(self):
        """The body's length, read to its end; EOFError if it is cut off."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            n = 0
            while True:
                size = int(self.line().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.line() not in (b"\r\n", b"\n"):
                        pass  # trailers
                    return n
                n += len(self.exactly(size))
                self.line()
        length = int(self.headers.get("Content-Length", "0"))
        return len(self.exactly(length))

    def answer(self):
        try:
            n = self.body_length()
        except (ValueError, OSError, EOFError):
            # Cut off or broken: no answer, nothing logged as complete.
            self.close_connection = True
            return
        with open(LOG, "a") as f:
            f.write(f"{self.command} {self.path} {n}\n")
        body = f"ok {n}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = answer

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
