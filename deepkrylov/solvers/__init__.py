"""deepkrylov.solvers"""
