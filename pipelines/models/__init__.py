"""Models built locally: the tiny Qwen2-VL the default run and the tests train."""
