"""The bench-route contract in Flask, for bench/run.py.

FLASK_BENCH_STORE picks the session backend, each the Flask deployment a hipflask backend
replaces: cookie (Flask's built-in signed cookie), redis (Flask-Session 0.8 on REDIS_URL),
filesystem (Flask-Session's cachelib FileSystemCache in FLASK_BENCH_DIR), sqlite, postgresql and
mysql (Flask-Session's SQLAlchemy backend on FLASK_BENCH_DB, a SQLAlchemy URL). Served by
gunicorn with two sync workers, as Flask apps are deployed; run.py starts it with --preload so
the session table is created once, before the workers fork.
"""

import os

from flask import Flask, session

app = Flask(__name__)
app.config["SECRET_KEY"] = "bench-secret"
store = os.environ.get("FLASK_BENCH_STORE", "cookie")
if store != "cookie":
    from flask_session import Session

    app.config["SESSION_KEY_PREFIX"] = "flask-bench:"
if store == "redis":
    import redis

    app.config["SESSION_TYPE"] = "redis"
    app.config["SESSION_REDIS"] = redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    Session(app)
elif store == "filesystem":
    from cachelib.file import FileSystemCache

    app.config["SESSION_TYPE"] = "cachelib"
    # No pruning below the bench's session count: pruning would be extra work and lost sessions.
    app.config["SESSION_CACHELIB"] = FileSystemCache(os.environ["FLASK_BENCH_DIR"], threshold=10_000_000)
    Session(app)
elif store in ("sqlite", "postgresql", "mysql"):
    from flask_sqlalchemy import SQLAlchemy

    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["FLASK_BENCH_DB"]
    db = SQLAlchemy(app)
    app.config["SESSION_TYPE"] = "sqlalchemy"
    app.config["SESSION_SQLALCHEMY"] = db
    app.config["SESSION_SQLALCHEMY_TABLE"] = os.environ.get("FLASK_BENCH_TABLE", "flask_bench_sessions")
    Session(app)
    with app.app_context():
        # The table was made in gunicorn's master (--preload): workers must not share its connection.
        db.engine.dispose()
elif store != "cookie":
    raise SystemExit(f"FLASK_BENCH_STORE={store!r} is not one of cookie, redis, filesystem, sqlite, postgresql, mysql")


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
