"""The model x forget-ratio x method matrix on a cluster: matrix expansion (``matrix``), submitit executors
(``executor``), what runs inside a job (``tasks``), the sweep itself (``sweep``) and its report (``report``).

Importing this package imports neither torch nor mlflow: submitit unpickles the job callables in a fresh
process, where the environment they set must come before the heavy imports.
"""
