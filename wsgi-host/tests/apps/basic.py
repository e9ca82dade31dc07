"""WSGI apps for the wsgi-host tests. Each is wrapped in wsgiref.validate.validator where
the PEP allows, so a validator assertion becomes a 500 the test sees."""
import sys
import time
import threading
from wsgiref.validate import validator

CLOSED = {"count": 0, "yielded": 0}


def _plain(start_response, status="200 OK", extra=()):
    start_response(status, [("Content-Type", "text/plain")] + list(extra))


@validator
def hello(environ, start_response):
    _plain(start_response)
    return [b"Hello World"]


def hello_plain(environ, start_response):
    _plain(start_response)
    return [b"Hello World"]


@validator
def echo(environ, start_response):
    """Reads the body with read(n) and answers it, with some environ facts."""
    n = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(n)
    facts = "%s|%s|%s|%s|%s|%s\n" % (
        environ["REQUEST_METHOD"], environ["SCRIPT_NAME"], environ["PATH_INFO"],
        environ["QUERY_STRING"], environ["wsgi.url_scheme"], environ.get("HTTP_COOKIE", "-"))
    _plain(start_response)
    return [facts.encode("latin-1"), body]


@validator
def stream(environ, start_response):
    """A generator that calls start_response late, inside the first iteration."""
    def gen():
        _plain(start_response, "201 Created")
        for i in range(5):
            yield b"chunk%d\n" % i
    return gen()


@validator
def big_blocks(environ, start_response):
    """Large blocks (handed to the server without a copy) made fresh and dropped while
    the body goes out: one written, six yielded, each with its own byte."""
    write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
    write(bytes([1]) * 100000)

    def gen():
        for i in range(2, 8):
            yield bytes([i]) * (50000 + i)
    return gen()


def big_single(environ, start_response):
    """One large block, the only item of the list (not validated: the validator's
    wrapper would hide the list)."""
    _plain(start_response)
    return [bytes([int(environ["QUERY_STRING"] or 9)]) * 300000]


@validator
def writer(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written;")
    return [b"returned"]


def file_wrapper_plain(environ, start_response):
    path = environ["QUERY_STRING"]
    f = open(path, "rb")
    f.seek(int(environ.get("HTTP_X_SKIP", "0")))
    _plain(start_response)
    return environ["wsgi.file_wrapper"](f, 4096)


file_wrapper = validator(file_wrapper_plain)


class NotAFile:
    def __init__(self, data):
        self.data = data
        self.closed = False

    def read(self, n):
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk

    def close(self):
        self.closed = True


@validator
def file_wrapper_iter(environ, start_response):
    _plain(start_response)
    return environ["wsgi.file_wrapper"](NotAFile(b"x" * 10000), 1000)


@validator
def exc_info(environ, start_response):
    """Changes its mind: an error before any body byte went out."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("boom")
    except ValueError:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
    return [b"handled"]


@validator
def errors(environ, start_response):
    environ["wsgi.errors"].write("an error line from the app\n")
    environ["wsgi.errors"].writelines(["partial ", "line\n"])
    environ["wsgi.errors"].flush()
    _plain(start_response)
    return [b"logged"]


@validator
def environ_dump(environ, start_response):
    keys = sorted(k for k in environ if not k.startswith("wsgi."))
    out = "".join("%s=%s\n" % (k, environ[k]) for k in keys)
    out += "version=%r multithread=%r multiprocess=%r run_once=%r terminated=%r\n" % (
        environ["wsgi.version"], environ["wsgi.multithread"], environ["wsgi.multiprocess"],
        environ["wsgi.run_once"], environ.get("wsgi.input_terminated"))
    _plain(start_response)
    return [out.encode("latin-1")]


def lines(environ, start_response):
    """readline() then read(), then iteration: every byte must survive."""
    inp = environ["wsgi.input"]
    first = inp.readline()
    rest4 = inp.read(4)
    second = inp.readline(3)
    remaining = list(inp)
    zero = inp.read(0)
    _plain(start_response)
    return [repr((first, rest4, second, remaining, zero)).encode()]


def read_all(environ, start_response):
    """read() with no size, for terminated (chunked) input."""
    data = environ["wsgi.input"].read()
    more = environ["wsgi.input"].read(10)
    _plain(start_response)
    return [b"%d %r %r" % (len(data), data[:20], more)]


def reads(environ, start_response):
    """Reads the body as QUERY_STRING says, ops separated by commas: rN is read(N), r
    read(), lN readline(N), l readline(); answers what each returned, in hex, joined
    by '|'."""
    inp = environ["wsgi.input"]
    out = []
    for op in environ.get("QUERY_STRING", "").split(","):
        if op:
            n = int(op[1:]) if len(op) > 1 else None
            out.append(inp.read(n) if op[0] == "r" else inp.readline(n))
    _plain(start_response)
    return [b"|".join(x.hex().encode() for x in out)]


def panics(environ, start_response):
    """Calls rust_panic, a Rust function that panics, which the test puts in builtins:
    before start_response, or with ?late in the middle of the body."""
    if environ.get("QUERY_STRING") == "late":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body():
            yield b"first"
            rust_panic()  # noqa: F821 (a builtin the test adds)

        return body()
    rust_panic()  # noqa: F821


def digest(environ, start_response):
    """Hashes a large body read in 64 KiB pieces."""
    import hashlib
    h = hashlib.sha256()
    inp = environ["wsgi.input"]
    total = 0
    while True:
        block = inp.read(65536)
        if not block:
            break
        total += len(block)
        h.update(block)
    _plain(start_response)
    return [("%d %s" % (total, h.hexdigest())).encode()]


class Closing:
    def __init__(self, blocks, fail_at=None, fail_close=False):
        self.blocks = blocks
        self.fail_at = fail_at
        self.fail_close = fail_close

    def __iter__(self):
        for i, b in enumerate(self.blocks):
            if i == self.fail_at:
                raise RuntimeError("iteration failed at %d" % i)
            CLOSED["yielded"] += 1
            yield b

    def close(self):
        CLOSED["count"] += 1
        if self.fail_close:
            raise RuntimeError("close failed")


def closed_count(environ, start_response):
    _plain(start_response)
    return [str(CLOSED["count"]).encode()]


# One string object, valid as a header value but not as a name: the host's cache of
# strings it has checked must not let it through as a name.
SPACED = "two words"
LATIN1_STATUS = "299 Tr\xe8s bien"


def misbehave(environ, start_response):
    what = environ["PATH_INFO"].strip("/")
    if what == "spaced-value":
        start_response(LATIN1_STATUS, [("Content-Type", "text/plain"), ("X-Spaced", SPACED)])
        return [b"x"]
    if what == "spaced-name":
        start_response("200 OK", [("Content-Type", "text/plain"), (SPACED, "x")])
        return [b"x"]
    if what == "spaced-status":
        start_response(SPACED, [("Content-Type", "text/plain")])
        return [b"x"]
    if what == "str":
        _plain(start_response)
        return ["not bytes"]
    if what == "none":
        _plain(start_response)
        return None
    if what == "raise-first":
        _plain(start_response)
        return Closing([b"a", b"b"], fail_at=0)
    if what == "raise-later":
        _plain(start_response)
        return Closing([b"a" * 10, b"b", b"c"], fail_at=2)
    if what == "raise-close":
        _plain(start_response)
        return Closing([b"complete"], fail_close=True)
    if what == "no-start":
        return [b"never started"]
    if what == "twice":
        _plain(start_response)
        _plain(start_response)
        return [b"twice"]
    if what == "raise":
        raise KeyError("app raised")
    if what == "spin":
        # CPU-bound: holds the GIL but for the interpreter's switch interval.
        end = time.monotonic() + float(environ["QUERY_STRING"] or "1")
        n = 0
        while time.monotonic() < end:
            n += 1
        _plain(start_response)
        return [b"spun"]
    if what == "sleep":
        time.sleep(float(environ["QUERY_STRING"] or "1"))
        _plain(start_response)
        return [b"slept"]
    if what == "stream-sleep":
        _plain(start_response)

        def gen():
            yield b"first"
            time.sleep(float(environ["QUERY_STRING"] or "1"))
            yield b"late"

        return gen()
    if what == "spin":
        end = time.monotonic() + float(environ["QUERY_STRING"] or "1")
        while time.monotonic() < end:
            pass
        _plain(start_response)
        return [b"spun"]
    if what == "bad-status":
        start_response("OK", [("Content-Type", "text/plain")])
        return [b"x"]
    if what == "bytes-header":
        start_response("200 OK", [(b"Content-Type", b"text/plain")])
        return [b"x"]
    if what == "hop":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Connection", "close")])
        return [b"x"]
    if what == "crlf":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Evil", "a\r\nSet-Cookie: x=1")])
        return [b"x"]
    if what == "many-headers":
        # More header fields than an HTTP response map holds (32,768).
        start_response("200 OK", [("X-H%d" % i, "v") for i in range(40000)])
        return [b"x"]
    if what == "tuple-headers":
        start_response("200 OK", (("Content-Type", "text/plain"),))
        return [b"x"]
    if what == "long":
        _plain(start_response)
        return Closing([b"x" * 1000] * 10000)
    if what == "closed":
        _plain(start_response)
        return [str(CLOSED["count"]).encode()]
    if what == "yielded":
        _plain(start_response)
        return [str(CLOSED["yielded"]).encode()]
    if what == "threads":
        _plain(start_response)
        return [threading.current_thread().name.encode()]
    _plain(start_response)
    return [b"ok"]


def environ_mutate(environ, start_response):
    """Dumps the CGI variables, then changes the environ the way apps do (later
    requests must see none of it)."""
    keys = sorted(k for k in environ if not k.startswith("wsgi."))
    out = "".join("%s=%s\n" % (k, environ[k]) for k in keys)
    environ["QUERY_STRING"] = "mutated"
    environ["CONTENT_TYPE"] = "mutated"
    environ["MUTATED"] = "yes"
    _plain(start_response)
    return [out.encode("latin-1")]
