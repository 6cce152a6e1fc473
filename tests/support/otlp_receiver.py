"""An OTLP logs receiver built from the official packages (opentelemetry-proto, grpcio,
grpcio-status): an independent decoder of what the otlp sink sends, over gRPC
(LogsService/Export) and HTTP/protobuf (POST /v1/logs).

Usage: otlp_receiver.py [--tls CERT KEY] ANSWER...

With --tls, gRPC is served over TLS with that certificate chain and key (HTTP stays plain).

Each request takes the next ANSWER (then `ok` for ever):
  ok                   accept everything
  unavailable          gRPC UNAVAILABLE / HTTP 503
  exhausted            gRPC RESOURCE_EXHAUSTED without RetryInfo / HTTP 429
  exhausted-retry      gRPC RESOURCE_EXHAUSTED with RetryInfo (1 s)
  invalid              gRPC INVALID_ARGUMENT / HTTP 400 (permanent)
  partial:N            accept, reporting N rejected records

Prints `{"grpc": PORT, "http": PORT}` first, then one JSON line per request: protocol,
the answer given, the metadata/headers, whether the body was gzip-compressed (HTTP; for gRPC
the `grpc-encoding` the client declared), and the request as OTLP JSON (MessageToDict).
"""

import gzip
import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import duration_pb2
from google.protobuf.json_format import MessageToDict
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc

args = list(sys.argv[1:])
tls = None
if args[:1] == ["--tls"]:
    tls, args = (args[1], args[2]), args[3:]
answers = args
lock = threading.Lock()


def next_answer():
    with lock:
        return answers.pop(0) if answers else "ok"


def report(protocol, answer, headers, gzipped, request):
    line = {
        "protocol": protocol,
        "answer": answer,
        "headers": headers,
        "gzip": gzipped,
        "request": MessageToDict(request) if request is not None else None,
    }
    with lock:
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


def response(answer):
    r = logs_service_pb2.ExportLogsServiceResponse()
    if answer.startswith("partial:"):
        r.partial_success.rejected_log_records = int(answer.split(":", 1)[1])
        r.partial_success.error_message = "records rejected by the test receiver"
    return r


class Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def Export(self, request, context):
        answer = next_answer()
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        report("grpc", answer, md, md.get("grpc-encoding"), request)
        if answer == "unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, "the test receiver is unavailable")
        if answer == "exhausted":
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "no retry info")
        if answer == "exhausted-retry":
            info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1))
            st = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="slow down")
            st.details.add().Pack(info)
            context.abort_with_status(rpc_status.to_status(st))
        if answer == "invalid":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the test receiver refuses it")
        return response(answer)


class Http(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, code, message, headers=()):
        body = message.SerializeToString()
        self.send_response(code)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.path != "/v1/logs":
            self.answer(404, status_pb2.Status(code=code_pb2.NOT_FOUND, message=self.path))
            return
        if headers.get("content-type") != "application/x-protobuf":
            self.answer(415, status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="content type"))
            return
        gzipped = headers.get("content-encoding") == "gzip"
        if gzipped:
            body = gzip.decompress(body)
        request = logs_service_pb2.ExportLogsServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception as e:  # noqa: BLE001 - a bad body is the client's fault
            self.answer(400, status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(e)))
            return
        answer = next_answer()
        report("http", answer, headers, gzipped, request)
        if answer == "unavailable":
            self.answer(503, status_pb2.Status(code=code_pb2.UNAVAILABLE, message="unavailable"), [("Retry-After", "1")])
        elif answer in ("exhausted", "exhausted-retry"):
            self.answer(429, status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="slow down"))
        elif answer == "invalid":
            self.answer(400, status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="the test receiver refuses it"))
        else:
            self.answer(200, response(answer))


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)
    if tls:
        with open(tls[0], "rb") as c, open(tls[1], "rb") as k:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        grpc_port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    http = ThreadingHTTPServer(("127.0.0.1", 0), Http)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    sys.stdout.write(json.dumps({"grpc": grpc_port, "http": http.server_address[1]}) + "\n")
    sys.stdout.flush()
    # Runs until stdin closes (the test that started it ended).
    sys.stdin.read()
    server.stop(0)
    http.shutdown()


if __name__ == "__main__":
    main()
