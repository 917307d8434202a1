"""Run health: the executor every job uses, and the detection of runs whose process died."""
