"""Create the database named in DATABASE_URL if it does not exist (used by `make db`)."""

from __future__ import annotations

import psycopg
from sqlalchemy.engine import make_url

from app.config import get_settings


def main() -> None:
    url = make_url(get_settings().database_url)
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{url.database}"')
            print(f"created database {url.database}")


if __name__ == "__main__":
    main()
