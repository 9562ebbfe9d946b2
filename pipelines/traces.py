"""The trace store's public names, where every caller imports them from.

Rows: ``pipelines/tracing/rows.py``; the writer (chain, manifest, images, background
thread): ``pipelines/tracing/writer.py``; checks: ``pipelines/tracing/verify.py``."""
from pipelines.tracing.rows import TRACE_COLUMNS, parse_reasoning, read_traces, trace_row
from pipelines.tracing.writer import TraceWriter, reset_store

__all__ = ["TRACE_COLUMNS", "TraceWriter", "parse_reasoning", "read_traces", "reset_store", "trace_row"]
