"""deepkrylov.operators"""
