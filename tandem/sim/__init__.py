"""The fleet simulator: a discrete-event model of a pool of workers that runs
Tandem's own planner, router selection and admission and the worker's block
pool against request traces, with worker costs measured on real devices.

Torch-free (an import-linter contract keeps it so): it runs anywhere the
control plane runs.
"""
