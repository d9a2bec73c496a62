#!/usr/bin/env bash
# One-shot, idempotent set-up of everything deepkrylov needs on a Debian machine:
# system OpenMPI + PETSc 3.18, a virtual environment in .venv, torch 2.13.0 (CPU),
# mpi4py and petsc4py built against the system MPI/PETSc, and deepkrylov in editable mode.
# A second run checks stamps and rebuilds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${DEEPKRYLOV_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
export PETSC_DIR=${PETSC_DIR:-/usr/lib/petscdir/petsc3.18/x86_64-linux-gnu-real}
export PETSC_ARCH=
log() { printf '[setup] %s\n' "$*"; }

# 1. System packages (Debian). Skipped where apt is absent: the core still installs, PETSc tests skip.
# libpetsc3.18-dev-examples: PETSc's own tutorials (src/ksp/ksp/tutorials/ex45.c), which
# examples/petsc_plugin builds to run deepkrylov's multigrid plugins in an unmodified PETSc program.
APT_PKGS="openmpi-bin libopenmpi-dev libpetsc-real3.18-dev libpetsc3.18-dev-examples libblas-dev liblapack-dev pkg-config"
if command -v dpkg-query >/dev/null 2>&1; then
  missing=""
  for p in $APT_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    log "installing Debian packages:$missing"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
  fi
else
  log "no dpkg: skipping system packages (PETSc features will be unavailable)"
fi

# 2. Virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
pipi() { "$VPY" -m pip install -q --disable-pip-version-check "$@"; }
stamp_ok() { [ -f "$VENV/.stamp-$1" ] && [ "$(cat "$VENV/.stamp-$1")" = "$2" ]; }
stamp_set() { echo "$2" > "$VENV/.stamp-$1"; }

# 3. Python dependencies (torch pinned to the CPU build that lies on disk).
DEPS="torch==2.13.0 numpy<2 scipy h5py tqdm matplotlib pytest pytest-timeout setuptools wheel"
if ! stamp_ok deps "$DEPS"; then
  log "installing Python dependencies"
  pipi $DEPS
  stamp_set deps "$DEPS"
fi

# 4. mpi4py against the system MPI.
if command -v mpicc >/dev/null 2>&1; then
  if ! stamp_ok mpi4py "$(mpicc --showme:version 2>&1 | head -1)"; then
    log "building mpi4py against $(command -v mpicc)"
    pipi --no-binary mpi4py "mpi4py>=3.1,<5"
    stamp_set mpi4py "$(mpicc --showme:version 2>&1 | head -1)"
  fi
else
  log "no mpicc: installing mpi4py wheel"
  stamp_ok mpi4py wheel || { pipi "mpi4py>=3.1,<5"; stamp_set mpi4py wheel; }
fi

# 5. petsc4py against the system PETSc.
if [ -d "$PETSC_DIR/include" ]; then
  if ! stamp_ok petsc4py "3.18.5 $PETSC_DIR"; then
    log "building petsc4py 3.18.5 against $PETSC_DIR (a few minutes, once)"
    # petsc4py 3.18's build hooks predate setuptools 70, while torch needs a newer one: build the wheel in a
    # separate build environment, then install it here.
    BVENV="$VENV/.petsc4py-build"
    [ -x "$BVENV/bin/python" ] || "$PY" -m venv "$BVENV"
    "$BVENV/bin/python" -m pip install -q --disable-pip-version-check "setuptools<70" wheel "cython<3.1" "numpy<2"
    "$BVENV/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
        -w "$VENV/wheels" "petsc4py==3.18.5"
    pipi --no-deps "$VENV"/wheels/petsc4py-3.18.5-*.whl
    stamp_set petsc4py "3.18.5 $PETSC_DIR"
  fi
else
  log "PETSc not found at $PETSC_DIR: petsc4py skipped (PETSc tests will be skipped)"
fi

# 6. deepkrylov itself, editable.
if ! stamp_ok self "$(sha1sum pyproject.toml | cut -c1-40)"; then
  log "installing deepkrylov (editable)"
  pipi --no-deps --no-build-isolation -e .
  stamp_set self "$(sha1sum pyproject.toml | cut -c1-40)"
fi
log "ready: $VENV"
