"""Datasets: the record schema, loaders (synthetic benchmark, Med-R1 splits,
OmniMedVQA), the Parquet store and a preview contact sheet.

Light to import: the heavy modules (PIL, pyarrow, matplotlib) load on use.
"""
from pipelines.data.schema import (LETTERS, MODALITIES, QUESTION_TYPES, UNKNOWN, VQARecord, normalize_modality,
                                   normalize_question_type)

__all__ = ["LETTERS", "MODALITIES", "QUESTION_TYPES", "UNKNOWN", "VQARecord", "normalize_modality",
           "normalize_question_type", "load_prepared", "read_manifest", "write_prepared", "build_synthetic"]


def __getattr__(name):
    if name in ("load_prepared", "read_manifest", "write_prepared"):
        from pipelines.data import store

        return getattr(store, name)
    if name == "build_synthetic":
        from pipelines.data.synthetic import build_synthetic

        return build_synthetic
    raise AttributeError(name)
