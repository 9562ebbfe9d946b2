"""The paper's generalization protocol: one GRPO run per domain, each evaluated on every test domain.

``run.py`` runs the cells, ``matrix.py`` builds the matrix and its report."""

# protocol kind -> the record field its domains are values of
KINDS = {"cross-modality": "modality", "cross-task": "question_type"}
BASE, SFT = "base", "sft"  # baseline rows: the model before GRPO, and an SFT model
