# make test: set up .venv when missing and run the test suite (what CI runs).
.PHONY: setup test lint bench

setup:
	@scripts/setup.sh

test: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check dream3d tests scripts

bench: setup
	.venv/bin/python scripts/bench.py
