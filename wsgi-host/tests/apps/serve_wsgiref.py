"""Serves a WSGI app with wsgiref.simple_server: the reference the tests compare with.
usage: serve_wsgiref.py PORT (wsgi-file FILE CALLABLE | module NAME)"""
import importlib.util
import os
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server

port = int(sys.argv[1])
sys.path.insert(0, os.getcwd())
if sys.argv[2] == "wsgi-file":
    spec = importlib.util.spec_from_file_location("refapp", sys.argv[3])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    app = getattr(mod, sys.argv[4])
else:
    mod = importlib.import_module(sys.argv[3])
    app = mod.application


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


make_server("127.0.0.1", port, app, handler_class=Quiet).serve_forever()
