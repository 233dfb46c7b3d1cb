"""A stand-in for the regulator's drug label API of examples/drug-labels, on 127.0.0.1 only:
GET /drug/label.json answers one label (openFDA shape) for any query. For scripts/schemathesis.sh."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LABEL = {
    "meta": {"results": {"total": 1}},
    "results": [{
        "set_id": "0a1b2c3d-1111-2222-3333-444455556666",
        "effective_time": "20240105",
        "indications_and_usage": ["Relief of minor aches and pains."],
        "openfda": {"brand_name": ["Painaway"], "generic_name": ["IBUPROFEN"]},
    }],
}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        body = json.dumps(LABEL).encode()
        status = 200 if self.path.startswith("/drug/label.json") else 404
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
