"""The bench-route contract in Flask, for bench/run.py.

FLASK_BENCH_STORE=cookie uses Flask's built-in signed cookie; =redis uses Flask-Session 0.8
on REDIS_URL. Served by gunicorn with two sync workers, as Flask apps are deployed.
"""

import os

from flask import Flask, session

app = Flask(__name__)
app.config["SECRET_KEY"] = "bench-secret"
if os.environ.get("FLASK_BENCH_STORE") == "redis":
    import redis
    from flask_session import Session

    app.config["SESSION_TYPE"] = "redis"
    app.config["SESSION_REDIS"] = redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    app.config["SESSION_KEY_PREFIX"] = "flask-bench:"
    Session(app)


@app.get("/bench/none")
def bench_none():
    return "ok"


@app.get("/bench/read")
def bench_read():
    return str(session.get("visits", 0))


@app.get("/bench/write")
def bench_write():
    session["visits"] = session.get("visits", 0) + 1
    return str(session["visits"])


@app.get("/bench/seed")
def bench_seed():
    session["visits"] = 1
    return "1"
