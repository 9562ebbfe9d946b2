"""A GRPO run: setup (model, data, actors), the GRPO loop, SFT, metrics and traces."""
