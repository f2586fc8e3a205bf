"""Render deploy/rabbitmq/definitions.json for the broker: each user's `password_env`
becomes the `password_hash` RabbitMQ expects (its documented salted SHA-256 scheme), read
from the environment; a variable unset or shorter than 12 characters is an error.

    python render_definitions.py TEMPLATE OUTPUT

Standard library only: compose runs it in a plain Python container before the broker.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

MIN_PASSWORD = 12


def password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def render(template: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    rendered = {k: v for k, v in template.items() if not k.startswith("_")}
    users = []
    for user in template["users"]:
        variable = user["password_env"]
        password = env.get(variable, "")
        if len(password) < MIN_PASSWORD:
            raise SystemExit(
                f"{variable}: the password of RabbitMQ user {user['name']} must be set "
                f"(at least {MIN_PASSWORD} characters)"
            )
        entry = {k: v for k, v in user.items() if k != "password_env"}
        entry["password_hash"] = password_hash(password)
        entry["hashing_algorithm"] = "rabbit_password_hashing_sha256"
        users.append(entry)
    rendered["users"] = users
    return rendered


def main(argv: list[str]) -> None:
    template, output = Path(argv[1]), Path(argv[2])
    rendered = render(json.loads(template.read_text()), dict(os.environ))
    output.write_text(json.dumps(rendered, indent=2))
    output.chmod(0o644)


if __name__ == "__main__":
    main(sys.argv)
