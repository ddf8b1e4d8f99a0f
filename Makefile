# Two commands for a newcomer: `make demo` and `make test`.
PY := .venv/bin/python
PORT ?= 8000
export DASHBOARD_INSECURE_DEV_KEY ?= 1

.PHONY: venv demo demo-reset test lint typecheck bench clean

venv:
	@scripts/bootstrap

demo: venv
	@DEBUG=1 $(PY) manage.py migrate --no-input -v 0
	@DEBUG=1 $(PY) manage.py demo_setup
	@PORT=$(PORT) scripts/serve-demo

demo-reset:
	rm -rf var/demo var/dashboard.sqlite3 var/dashboard.sqlite3-wal var/dashboard.sqlite3-shm
	@$(MAKE) --no-print-directory demo

test: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy dashboard
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: venv
	$(PY) -m mypy dashboard

bench: venv
	$(PY) bench/bench_graph.py
	$(PY) bench/bench_status.py
	$(PY) bench/bench_actions.py
	$(PY) bench/bench_overview.py
	$(PY) bench/bench_drift.py
	$(PY) bench/bench_locks.py
	$(PY) bench/bench_fleet.py
	$(PY) bench/bench_startup.py
	$(PY) bench/bench_cli_gate.py

clean:
	rm -rf .venv var .mypy_cache .ruff_cache
