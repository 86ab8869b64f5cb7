"""ckpt's benchmarks (``make bench``): see bench/run.py and bench/framework.py."""
