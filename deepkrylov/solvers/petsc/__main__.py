"""``python -m deepkrylov.solvers.petsc``: the shell lines that let a PETSc C program run deepkrylov's plugins."""

from .plugins import embedding_environment

env = embedding_environment()
print(f"export PYTHONPATH={env['PYTHONPATH']}")
print(f"# then add to the PETSc program's options:  -python {env['python']}")
