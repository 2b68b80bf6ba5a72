"""Flask + Flask-Session 0.8 and the hipflask demo share one Redis.

A session written by each side is read and changed by the other. Run by
run.sh, which starts the demo (DEMO_URL) on the same Redis, secret and prefix.
"""

import os
import urllib.request

import redis
from flask import Flask, flash, session
from flask_session import Session

DEMO = os.environ["DEMO_URL"]
app = Flask(__name__)
app.config.update(
    SECRET_KEY=os.environ["SECRET_KEY"],
    SESSION_TYPE="redis",
    SESSION_REDIS=redis.from_url(os.environ["REDIS_URL"]),
    SESSION_KEY_PREFIX=os.environ["PREFIX"],
)
Session(app)


@app.get("/incr")
def incr():
    session["visits"] = session.get("visits", 0) + 1
    return str(session["visits"])


@app.get("/read")
def read():
    return str(session.get("visits", 0))


@app.get("/flash")
def flash_one():
    flash("Hello from Flask")
    return "ok"


def demo(path, sid=None):
    """GET on the hipflask demo; returns the body and the sid it sets."""
    headers = {"Cookie": f"session={sid}"} if sid else {}
    with urllib.request.urlopen(urllib.request.Request(DEMO + path, headers=headers)) as r:
        body = r.read().decode()
        cookie = r.headers.get("Set-Cookie") or ""
    new_sid = cookie.split(";")[0].split("=", 1)[1] if cookie.startswith("session=") else None
    return body, new_sid


results = []


def check(name, got, want):
    ok = got == want
    results.append(ok)
    print(("ok   " if ok else "FAIL ") + f"{name}: got {got!r}, want {want!r}")


flask_client = app.test_client()
for _ in range(3):
    flask_client.get("/incr")
sid = flask_client.get_cookie("session").value
check("hipflask reads a session Flask wrote", demo("/bench/read", sid)[0], "3")
check("hipflask changes it", demo("/bench/write", sid)[0], "4")
check("Flask sees hipflask's change", flask_client.get("/read").get_data(as_text=True), "4")
check("Flask changes it again", flask_client.get("/incr").get_data(as_text=True), "5")
check("hipflask sees that", demo("/bench/read", sid)[0], "5")

body, sid2 = demo("/bench/seed")
check("hipflask makes a new session", (body, sid2 is not None and len(sid2) == 43), ("1", True))
other = app.test_client()
other.set_cookie("session", sid2)
check("Flask reads a session hipflask wrote", other.get("/read").get_data(as_text=True), "1")
check("Flask changes it", other.get("/incr").get_data(as_text=True), "2")
check("hipflask sees Flask's change", demo("/bench/read", sid2)[0], "2")

other.get("/flash")
page, _ = demo("/", sid2)
check("a message flashed by Flask shows in hipflask", "Hello from Flask" in page, True)
check("and is consumed", other.get("/read").get_data(as_text=True), "2")
page, _ = demo("/", sid2)
check("only once", "Hello from Flask" in page, False)

failed = results.count(False)
print(f"{len(results) - failed} passed, {failed} failed")
raise SystemExit(1 if failed else 0)
