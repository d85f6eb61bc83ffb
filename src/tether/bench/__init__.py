"""`tether bench`: load generators, scenarios and the runner that compares tether with its peers.

`tether.bench.swarm` and `tether.bench.load` run as load processes of their own; `tether.bench.cli`
adds the `bench` subcommand to the `tether` command.
"""

__all__: list[str] = []
