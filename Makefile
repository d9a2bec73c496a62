# deepkrylov: the two front-door commands.
#   make demo   set up everything (idempotent), then run the main job
#   make test   set up everything (idempotent), then run the whole test suite (serial + mpiexec -n 1/2/4)
VENV    := .venv
PY      := $(VENV)/bin/python
MPIEXEC := mpiexec --allow-run-as-root --oversubscribe --mca btl_vader_single_copy_mechanism none
NP      ?= 2
export OMP_NUM_THREADS ?= 1

.PHONY: setup demo test bench clean

setup:
	@bash scripts/setup.sh

DEMO_N ?= 64
demo: setup
	$(PY) -m deepkrylov.cli info
	$(PY) -m deepkrylov.cli solve --n $(DEMO_N) --methods learned mg pcg icc gamg hypre --rtol 1e-6 \
	    --plot demo_residuals.png --json demo_solve.json
	$(MPIEXEC) -n $(NP) $(PY) -m deepkrylov.cli solve --n 64 --methods learned mg pcg gamg hypre --rtol 1e-6
	$(MPIEXEC) -n $(NP) $(PY) examples/distributed_conv.py

test: setup
	$(PY) -m pytest -q -p no:cacheprovider --timeout=900 tests

bench: setup
	$(PY) benchmarks/halo.py

clean:
	rm -rf $(VENV) build *.egg-info
