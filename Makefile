# The interface: run, test, bench, lint. Each target sets up .venv first when it is missing.
PY      := .venv/bin/python
STAMP   := .venv/.installed
export PYTHONUNBUFFERED := 1

.PHONY: run test bench chaos lint schemas demo clean postgres browser kafka

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)  ## broker + all services on the default ports; Ctrl-C stops everything
	.venv/bin/yibao run

demo: $(STAMP)  ## narrated scenario against a running `make run`
	.venv/bin/yibao demo

test: $(STAMP)  ## unit, integration and end-to-end tests on Apache Kafka (one node for the session), SQLite and PostgreSQL
	$(PY) -m pytest -q

bench: $(STAMP)  ## settlements/s and latency (var/bench.json); enrolment intake (var/bench-enroll.json); rules' precision/recall (var/bench-monitor.json)
	.venv/bin/yibao bench settle
	.venv/bin/yibao bench enroll
	.venv/bin/yibao bench monitor

chaos: $(STAMP)  ## claims while processes, a broker and PostgreSQL die; the books checked (var/chaos.json)
	YIBAO_DATABASE_URL=$${YIBAO_DATABASE_URL:-postgresql://postgres@127.0.0.1/test} .venv/bin/yibao chaos

lint: $(STAMP)
	.venv/bin/ruff check services schemas tests deploy
	.venv/bin/mypy services schemas

schemas: $(STAMP)  ## regenerate schemas/json from the models
	.venv/bin/yibao schemas export

postgres:  ## install (Debian's packages), start and prepare PostgreSQL for the tests; needs root
	bash deploy/postgres/setup.sh

browser:  ## install Debian's Chromium for the console's browser test; needs root
	bash deploy/browser/setup.sh

kafka: $(STAMP)  ## resolve Apache Kafka's jars from Maven Central into var/kafka/lib
	.venv/bin/yibao kafka fetch

clean:  ## the local databases, the local Kafka node's data, bench results (not the Kafka jars)
	rm -rf var/*.db var/bench.json var/kafka/data
