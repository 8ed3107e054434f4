"""KPI report benchmark: `python -m bench.reports [--leads N]`."""
