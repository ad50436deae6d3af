"""A tiny HTTP server in a background thread for /metrics, health, readiness and the status page.

The standard library's server is enough for a handful of GET routes scraped every few seconds; it
keeps the services free of a web framework and runs beside their asyncio loop without touching it.
"""

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Response = tuple[int, str, bytes]
"""Status code, content type, body."""
Routes = dict[str, Callable[[], Response]]


def serve(host: str, port: int, routes: Routes) -> ThreadingHTTPServer:
    """Serve `routes` (path -> handler) on host:port until `server.shutdown()`; port 0 picks a free one."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the standard library's name
            route = routes.get(self.path.split("?", 1)[0])
            status, content_type, body = route() if route else (404, "text/plain", b"not found\n")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # scrapes every few seconds would flood the log
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name=f"http-{port}", daemon=True).start()
    return server
