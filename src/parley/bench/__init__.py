"""``parley bench``: Parley's figures measured on this machine, each beside its floor.

* ``parley.bench.run``: the command (``Settings``, ``run``, ``main``);
* ``parley.bench.floors``: the floors (bare mutual-TLS round trip with two
  commits, the core's own rates, bare signature verification);
* ``parley.bench.terminals``: latency, throughput, backlog and memory on real
  ``parley serve`` processes;
* ``parley.bench.transcript``: a generated terminal data directory with a
  long, valid transcript;
* ``parley.bench.report``: targets, table, JSON fields and the latency plot.

Nothing here is imported by the terminal itself; ``parley bench`` imports it
only when run. The plot needs matplotlib (``pip install parley[bench]``).
"""
