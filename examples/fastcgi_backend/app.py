"""A WSGI app behind flup's FastCGI server, on the unix socket given as argv[1]."""
import sys

from flup.server.fcgi import WSGIServer


def app(environ, start_response):
    n = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(n)
    text = "FastCGI app: %s %s%s, %d bytes\n" % (
        environ["REQUEST_METHOD"], environ.get("SCRIPT_NAME", ""), environ.get("PATH_INFO", ""), len(body))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [text.encode()]


WSGIServer(app, bindAddress=sys.argv[1]).run()
