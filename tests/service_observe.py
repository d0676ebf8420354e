"""What the test_service*.py files share about their observe-mode gRPC server.

Each of tests/unit/test_service.py, test_service_lifecycle.py and test_service_cli.py runs one such
server for its read-only tests: the fixtures `server`, `ch`, `stub` and `decision_log_path` in
tests/unit/conftest.py start it (one per test module) with the limits and prompt-hash key below.
PROMPTS are what the tests send it: "Prove the theorem." routes strong on the toy router.
"""

from __future__ import annotations

MAX_PROMPT_CHARS = 20_000
PROMPT_HASH_KEY = b"test-prompt-hash-key-0123456789"
PROMPTS = [
    "What is 2 + 2?",
    "Prove that there are infinitely many primes, then generalise the argument to primes of the form 4k+3.",
    "Translate 'good morning' into French.",
    "Write a Python function that merges overlapping intervals and analyse its complexity.",
    "Prove the theorem.",  # strong on the toy router
]
