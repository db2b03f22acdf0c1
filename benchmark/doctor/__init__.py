"""``benchmark doctor``: one command that proves a box can run the benchmark, and how fast."""
