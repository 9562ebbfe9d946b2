"""The trace store: one hash-chained Parquet row per completion (train and eval), with the
provenance to audit it; its manifest, images, writer and verifier (tools: ``pipelines/audit``)."""
