"""Command-line tools: `dctrl` (operations) and the benchmarks."""
