"""Studies: the multi-run measurements behind the README's numbers (compare, sample
efficiency, ablations, failure modes, base noise sensitivity, expert success) and the
headline table they write. Throughput tools live in ``benchmarks``."""
