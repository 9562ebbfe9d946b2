"""Models built locally: the tiny Qwen-VL replicas the default run and the tests train."""
