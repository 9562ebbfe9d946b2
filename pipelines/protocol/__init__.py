"""The paper's generalization protocol: one GRPO run per domain, each evaluated on every test domain."""
