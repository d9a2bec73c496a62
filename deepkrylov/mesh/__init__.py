"""deepkrylov.mesh"""
