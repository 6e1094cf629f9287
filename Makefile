# Local developer entry points. The stack itself is managed by deploy/local/stack
# (see deploy/local/README.md); its settings (ports, STACK_DIR, BROKER_STORAGE)
# are read from the environment, e.g. `BROKER_STORAGE=memory make up`.

STACK := deploy/local/stack
DEMO  := deploy/local/demo

.DEFAULT_GOAL := help
.PHONY: help up down status logs demo install test lint bench

help:
	@echo "make up       install deps, start infra + services, run the demo"
	@echo "make down     stop everything started by the stack"
	@echo "make status   one line per component"
	@echo "make logs     tail logs (make logs C=pg-primary for one component)"
	@echo "make demo     place an order and read it back"
	@echo "make install  install prerequisites (apt packages, tansu)"
	@echo "make test     install prerequisites, build the binaries, cargo test --workspace --locked --no-fail-fast"
	@echo "make lint     cargo fmt --check and cargo clippy -D warnings"
	@echo "make bench    benchmarks against pgbench, redis-benchmark, a bare actix handler in the same run -> docs/BENCHMARKS.md"

up:
	$(STACK) up
	$(DEMO)

down:
	$(STACK) down

status:
	$(STACK) status

logs:
	$(STACK) logs $(C)

demo:
	$(DEMO)

install:
	$(STACK) install

# Tests start their own throwaway stacks; they only need the prerequisites
# installed. The service binaries are built first because fault tests run
# them as separate processes (to kill -9 them).
test:
	$(STACK) install
	cargo build --workspace --bins --locked
	cargo test --workspace --locked --no-fail-fast

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

# Own throwaway stack on other ports (see deploy/local/bench); about 20 minutes
# (write path, projector catch-up from a 200k-event backlog, query reads).
bench:
	deploy/local/bench
