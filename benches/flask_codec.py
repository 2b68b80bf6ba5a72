"""Times Flask's own cookie codec on the sessions of hipflask's codec bench.

Run in a venv with Flask installed (`benches/flask_codec.sh` makes one):
prints the median microseconds per encode+sign and decode+verify, to set
beside `cargo bench -p hipflask --bench codec`.
"""

import statistics
import timeit

from flask import Flask
from flask.sessions import SecureCookieSessionInterface

app = Flask(__name__)
app.secret_key = "secret"
serializer = SecureCookieSessionInterface().get_signing_serializer(app)

items = [
    {
        "name": f"Item number {i} with a name",
        "price": float(f"{i * 3}.99"),
        "qty": i % 5 + 1,
        "sku": f"SKU-{i:04}-{i * 7919:x}",
    }
    for i in range(23)
]
sessions = {
    "user_pwd": {"user": "poloyy", "pwd": "password"},
    "cart": {"cart_item": {"pineapples": "10", "apples": "20", "mangoes": "30"}},
    "session_2k": {
        "csrf_token": "4c3d1b2e9f7a6b5c8d0e1f2a3b4c5d6e7f8a9b0c",
        "items": items,
        "user_id": 42,
    },
}


def median_us(fn, number):
    runs = timeit.repeat(fn, number=number, repeat=7)
    return statistics.median(runs) / number * 1e6


with app.app_context():
    for name, session in sessions.items():
        cookie = serializer.dumps(session)
        enc = median_us(lambda: serializer.dumps(session), 2000)
        dec = median_us(lambda: serializer.loads(cookie, max_age=2678400), 2000)
        print(f"{name}: encode_sign {enc:.2f} us, decode_verify {dec:.2f} us, cookie {len(cookie)} bytes")
