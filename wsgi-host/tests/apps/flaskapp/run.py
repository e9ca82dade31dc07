"""A small Flask app for the wsgi-host tests."""
import hashlib

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.route("/")
def index():
    return jsonify(hello="flask", path=request.path, args=request.args)


@app.route("/form", methods=["POST"])
def form():
    return "name=%s quantity=%s\n" % (request.form.get("name"), request.form.get("quantity"))


@app.route("/upload", methods=["POST"])
def upload():
    f = request.files["doc"]
    data = f.read()
    return "%s %d %s\n" % (f.filename, len(data), hashlib.sha256(data).hexdigest())


@app.route("/missing-on-purpose")
def missing():
    return "nope", 404
