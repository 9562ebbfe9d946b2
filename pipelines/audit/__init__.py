"""Reading a trace store for people: cases in the terminal, the static HTML case viewer,
exports, and the reported numbers recomputed from the rows (``medr1 trace``)."""
