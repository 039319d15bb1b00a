# m2f-lightning developer commands. `make install` sets up .venv; `make test` runs the whole suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
export WANDB_MODE ?= disabled

.PHONY: install test test-fast test-slurm test-slurm-multinode lint format demo bench mutate clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[dev]'
	# panopticapi's code (the tests' PQ judge); --no-deps: its numpy<2 pin is not needed
	$(BIN)/pip install --quiet --no-deps panopticapi-lite==0.2.0
	touch $@

# Two pytest calls: the tests that need no SLURM cluster spread over $(TEST_WORKERS) processes
# (pytest-xdist; --dist loadscope keeps a module's tests, and so its module fixtures, on one
# worker), then the `slurm` tests one at a time (they share one small cluster). Both always run;
# the target fails if either does. Exit status 5 (nothing selected) counts as passing. The first
# call lists its 20 slowest tests (what to look at when CI nears its 30-minute limit).
TEST_WORKERS ?= 2
PYTEST_PAR    = $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=20
define run_two
	status=0; \
	$(PYTEST_PAR) -m "$(1)not slurm" || status=$$?; \
	$(BIN)/pytest -q -m "$(1)slurm and not multinode" || { s=$$?; [ $$s -eq 5 ] || status=$$s; }; \
	exit $$status
endef

test: install
	$(call run_two,)

test-fast: install
	$(call run_two,not slow and )

# the SLURM launcher and pre-emption requeue against a single-node cluster on this machine (root)
test-slurm: install
	bash scripts/local_slurm.sh start
	$(BIN)/pytest -q -m "slurm and not multinode"

# DDP over two nodes (tests/test_slurm_multinode.py): replaces a running local cluster by one of two
# nodes, each in its own network and UTS namespace (root); 8 CPUs declared per node so the two-node
# and the one-node x 4 jobs of the tests run side by side
test-slurm-multinode: install
	bash scripts/local_slurm.sh stop
	LOCAL_SLURM_CPUS=8 bash scripts/local_slurm.sh start --nodes 2
	M2F_REQUIRE_SLURM_MULTINODE=1 $(BIN)/pytest -q -m multinode

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: install
	WANDB_MODE=offline $(BIN)/python scripts/demo.py

# one table, ours vs the reference alternated in one run; rows also in $(BENCH_JSON)
# (BENCH_ARGS=--compile adds the rows of ours under compile=true)
BENCH_JSON ?= build/bench.json
BENCH_ARGS ?=
bench: install
	mkdir -p $(dir $(BENCH_JSON))
	$(BIN)/python scripts/bench.py --json $(BENCH_JSON) $(BENCH_ARGS)

# mutation testing of one module with its fast tests (not part of `make test`): make mutate MODULE=metrics
# modules: metrics inference losses checkpoints targets readers resume; results in docs/testing.md
mutate: install
	$(BIN)/python scripts/mutate.py $(MODULE)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
