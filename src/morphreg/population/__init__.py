"""Population scale: many registrations at once on Dask (local cluster or a real scheduler)."""
from morphreg.population.batch import BatchRow, read_pairs, register_row, run_batch

__all__ = ["BatchRow", "read_pairs", "register_row", "run_batch"]
