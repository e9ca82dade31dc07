"""The Flask tutorials' app: `gateway --http :9002 --wsgi-file run.py --callable app`."""
from flask import Flask, request

app = Flask(__name__)


@app.route("/")
def hello():
    return "Hello from Flask, served by the gateway!\n"


@app.route("/echo", methods=["POST"])
def echo():
    return {"length": len(request.get_data()), "form": request.form.to_dict()}
