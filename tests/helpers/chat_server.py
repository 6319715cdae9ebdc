"""A local OpenAI-compatible ``/v1/chat/completions`` server whose answers a test scripts."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

# respond(body) -> (HTTP status, payload): a str is sent as the raw body, a dict as JSON.
Responder = Callable[[dict[str, Any]], tuple[int, "str | dict[str, Any]"]]


def chat_answer(content: str) -> dict[str, Any]:
    """A chat-completions body whose message is ``content``."""
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


class ChatServer:
    """Serves ``respond`` on 127.0.0.1 (a free port) in a daemon thread; records every request.

    ``bodies`` and ``auth`` (the Authorization headers) are appended under a lock, so a
    client with several workers can be checked afterwards.
    """

    def __init__(self, respond: Responder):
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str] = []
        lock, server = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    server.bodies.append(body)
                    server.auth.append(self.headers.get("Authorization", ""))
                if self.path != "/v1/chat/completions":
                    status, payload = 404, "not found"
                else:
                    status, payload = respond(body)
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a client that gave up on a slow answer leaves a broken pipe

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
