"""Datasets: the record schema, loaders (synthetic benchmark, Med-R1 splits,
OmniMedVQA), the Parquet store, the training cursor and a preview contact sheet."""
