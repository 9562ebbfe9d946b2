"""The trace store: one hash-chained Parquet row per completion (train and eval), with the
provenance to audit it, and the tools that verify, show, report, export and recompute it."""
