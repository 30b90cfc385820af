"""`llama-convert bulk`: many conversions from one manifest, resumable, on one machine or a Ray cluster.

manifest (rows read and checked; overlap: which of a run's paths nest) -> done (a row's conversion.json
against its plan) -> memory (estimates, admission) -> planner (rows' plans, shared between identical
sources) -> runner (one row as subprocesses of the real CLI) -> local / ray_exec (executors) -> journal
(append-only record, report) -> driver (all of it in order). sources writes manifests from a HF hub
cache or a directory tree.
"""
