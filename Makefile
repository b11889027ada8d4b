# Two commands for a newcomer: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

# Tests use this Redis for the real-worker tests when it answers; they skip without it.
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: install run migrate demo test fuzz lint check bench worker beat clean

$(STAMP): requirements.txt requirements-dev.txt client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/python manage.py migrate --noinput

demo: migrate
	$(BIN)/python manage.py seed_demo

## Embedded mode: a private PostgreSQL under var/ (unless DATABASE_URL is set), tasks
## in-process; migrates, seeds the demo, serves http://127.0.0.1:8000, stops the server on exit
run: install
	$(BIN)/python manage.py run_embedded $(HOST):$(PORT)

## The whole suite: on DATABASE_URL if set, else on the embedded PostgreSQL server
test: install
	REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} CELERY_TASK_ALWAYS_EAGER=true $(BIN)/pytest $(PYTEST_ARGS)

## Schema-driven fuzzing (schemathesis, every check) of the API served by gunicorn, with a Celery
## worker when REDIS_URL is set (Redis databases 7-9 of its server), as a provider, a lab and an
## organization with both roles. In its own database fuzz_<name> on DATABASE_URL's server if set,
## else on the embedded server. A few minutes.
fuzz: install
	$(BIN)/python fuzz/run.py $(FUZZ_ARGS)

lint: install
	$(BIN)/ruff check .

check: install
	$(BIN)/python manage.py check
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/python manage.py spectacular --validate --fail-on-warn --file /dev/null

## Benchmarks on PostgreSQL, each in its own bench database; each prints one JSON line
bench: install
	@for script in bench/[a-z]*.py; do \
		env -u DATABASE_URL $(BIN)/python $$script || exit 1; \
	done

## Production shape (needs DATABASE_URL and REDIS_URL)
worker: install
	$(BIN)/celery -A config worker --loglevel=INFO

beat: install
	$(BIN)/celery -A config beat --loglevel=INFO

clean:
	rm -rf $(VENV) var staticfiles
