"""`python -m jobs.bench COMMAND ...`: the same commands as `factory bench COMMAND ...`."""

from jobs.bench.cli import bench_app

bench_app(prog_name="python -m jobs.bench")
