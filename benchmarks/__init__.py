"""mexd's benchmarks: speed scripts and the method-comparison study.

Run from the repository root as `python -m benchmarks.<name>` (e.g.
`python -m benchmarks.step_time --help`); docs/benchmarks.md lists them.
Not part of the installed wheel (pyproject.toml packages only `mexd*`).
"""
