# Local developer entry points. The stack itself is managed by deploy/local/stack
# (see deploy/local/README.md); its settings (ports, STACK_DIR, BROKER_STORAGE)
# are read from the environment, e.g. `BROKER_STORAGE=memory make up`.

STACK := deploy/local/stack
DEMO  := deploy/local/demo

.DEFAULT_GOAL := help
.PHONY: help up down status logs demo install test lint bench bench-smoke doctor image-binaries deploy-check

help:
	@echo "make up       install deps, start infra + services, run the demo"
	@echo "make down     stop everything started by the stack"
	@echo "make status   one line per component"
	@echo "make logs     tail logs (make logs C=pg-primary for one component)"
	@echo "make demo     place an order and read it back"
	@echo "make doctor   ranked bottleneck diagnosis of the running stack (run it under load; ARGS=\"--window 10 --json\")"
	@echo "make install  install prerequisites (apt packages, tansu)"
	@echo "make test     install prerequisites, build the binaries (and the image's, release), cargo test --workspace --locked --no-fail-fast"
	@echo "make deploy-check    offline checks of deploy/docker, deploy/compose, deploy/k8s (schemas + project rules)"
	@echo "make image-binaries  the Dockerfile's build step without docker (release, SQLX_OFFLINE=true)"
	@echo "make lint     cargo fmt --check and cargo clippy -D warnings"
	@echo "make bench    baselines (pgbench, redis-benchmark, bare actix, raw rdkafka) at start and end, every workload as a ratio to its baseline, targets, drift -> docs/BENCHMARKS.md"
	@echo "make bench-smoke  the same suite with tiny sizes and debug binaries in a temp dir (seconds per step; docs/ untouched)"

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

# Watches the running stack for a window (default 5 s) and ranks what is slow,
# why, and which lever fits (docs/adr/0015-bottleneck-doctor.md).
doctor:
	$(STACK) doctor $(ARGS)

install:
	$(STACK) install

# Tests start their own throwaway stacks; they only need the prerequisites
# installed. The service binaries are built first because fault tests run
# them as separate processes (to kill -9 them).
test:
	$(STACK) install
	cargo build --workspace --bins --locked
	deploy/docker/build-binaries target/image-binaries
	cargo test --workspace --locked --no-fail-fast

# The container image's build step, without docker: the same script the
# Dockerfile runs (release profile, SQLX_OFFLINE=true).
image-binaries:
	deploy/docker/build-binaries target/image-binaries

# Offline checks of the Dockerfile, compose stack and Kubernetes manifests
# (`make test` runs them too, as tests/tests/deploy_files.rs).
deploy-check:
	deploy/validate

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

# Own throwaway stack on other ports (see deploy/local/bench); about 40 minutes
# (baselines at start and end, write path, projector catch-up from a 200k-event
# backlog, query reads, freshness, cost growth at 0 and 1M stored events; 10M
# opt-in: BENCH_COST_GROWTH_SIZES=0,1000000,10000000), then the summary.
bench:
	deploy/local/bench

# The suite end to end with tiny sizes (what tests/tests/bench_smoke.rs runs
# in CI); outputs in BENCH_OUTPUT_DIR (default a temp dir).
bench-smoke:
	BENCH_SMOKE=1 deploy/local/bench
