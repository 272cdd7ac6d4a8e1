# make run   : the main job, the quickstart: SFT -> labeling -> reward model -> PPO on SmolLM2-135M-Instruct
#              (its measured time is in the README, "The two commands"; a rerun continues: finished stages are skipped)
# make test  : the whole test suite, inside a loopback-only network namespace when ../shared/tools has one
# make test-fast : the inner loop, tests/unit: the tests that start no Ray (about 63 s on 2 CPU cores, measured:
#              the checkpoint memory test, the lock races and the docs' python blocks run subprocesses)
# make bench : rlhf-ray beside raw vLLM, plain torch and TRL on SmolLM2-135M (runs/bench-smollm2/bench.md; 32 minutes
#              from a fresh clone on 2 cores, after the install; ARGS="--only sync" for some sections)
# All create .venv and install what is missing first (deploy/install.sh; a second run changes nothing).
VENV ?= .venv
PY := $(VENV)/bin/python
NETNS := $(wildcard ../shared/tools/netns-run)
PYTEST_ARGS ?=
ARGS ?=

export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER = 0
export VLLM_HOST_IP = 127.0.0.1
export MASTER_ADDR = 127.0.0.1
export GLOO_SOCKET_IFNAME = lo
export TOKENIZERS_PARALLELISM = false

.PHONY: install bench-deps run test test-fast bench
install:
	@deploy/install.sh $(VENV)

# The peer of the benchmark, TRL, in a venv of its own (needs the package index once; tests run offline).
bench-deps: install
	@$(PY) -m rlhf_ray.bench.peer --install

run: install
	$(NETNS) $(VENV)/bin/rlhf-ray run configs/quickstart.yaml $(ARGS)

# Two workers, one test file each at a time, the long end-to-end files first and the short ones filling in at the end.
# The job API tests run beside the unit tests only, which start no Ray: Ray's dashboard agent always listens on port
# 52365, so while a second cluster with a dashboard runs on the machine, there is no job API.
XDIST := -n 2 --dist loadfile --no-loadscope-reorder
test: install bench-deps
	$(NETNS) $(PY) -m pytest tests/e2e tests/cpu -q -rs --durations=15 $(XDIST) --ignore tests/e2e/test_cluster_ops.py $(PYTEST_ARGS)
	$(NETNS) $(PY) -m pytest tests/e2e/test_cluster_ops.py tests/unit -q -rs $(XDIST) $(PYTEST_ARGS)

# The inner loop: the unit tests, which start no Ray (the same files as in `make test`'s second line).
test-fast: install
	$(NETNS) $(PY) -m pytest tests/unit -q -rs $(XDIST) $(PYTEST_ARGS)

bench: install bench-deps
	$(NETNS) $(VENV)/bin/rlhf-ray bench --model smollm2 $(ARGS)
