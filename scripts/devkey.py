"""Print the local development API key, creating it on first use (used by `make run`).

The key is kept in `.agentexec-dev-key` (git-ignored, mode 600) because the database
stores only its hash; a key that no longer verifies (revoked, or a new database) is
replaced.
"""

from __future__ import annotations

import os
from pathlib import Path

from app.bootstrap import build_service

KEY_FILE = Path(os.environ.get("AGENTEXEC_DEV_KEY_FILE", ".agentexec-dev-key"))


def main() -> None:
    store = build_service().keys
    assert store is not None
    key = KEY_FILE.read_text().strip() if KEY_FILE.exists() else ""
    if not key or store.verify(key) is None:
        key, _ = store.create("dev", "local development key (make run)")
        KEY_FILE.write_text(key + "\n")
        KEY_FILE.chmod(0o600)
    print(key)


if __name__ == "__main__":
    main()
