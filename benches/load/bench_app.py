"""One WSGI app for the load benchmark, routed by PATH_INFO:
/hello (the tutorials' hello world), /echo (returns the POSTed body), /stream (1 MiB in
64 KiB blocks from a generator)."""

BLOCK = b"x" * 65536


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/echo":
        n = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(n)
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (BLOCK for _ in range(16))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello World"]
