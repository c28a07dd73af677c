"""Exit codes of ``warehouse-gateway`` (documented in docs/operations.md)."""

from __future__ import annotations

# Exit codes of ``run`` (and of ``check`` for 2 and 5): 0 stopped on request,
# 1 failed (``gateway_failed`` in the log), 2 configuration invalid, 3 the store
# is in use by another gateway, 4 the status port cannot be bound, 5 a
# certificate, key or CA file named in the config is missing or unreadable
# (and, for ``check``, does not parse, is expired or does not match its key),
# 6 the store's folder or file cannot be created, read or written. Codes 3 to 6
# come with exactly one line on stderr naming the problem.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_STORE_LOCKED = 3
EXIT_STATUS_PORT = 4
EXIT_MISSING_FILE = 5
EXIT_STORE_DIR = 6
#: Exit code of each ``StartupError.reason``.
STARTUP_EXIT_CODES = {"status_port": EXIT_STATUS_PORT, "store_dir": EXIT_STORE_DIR}
