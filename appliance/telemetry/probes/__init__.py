"""Hardware probes: each reads one part of a (possibly recorded) `/sys`, `/proc` tree.

Probes use only the standard library, take the filesystem root as an argument (so tests pass
a recorded tree, the node_exporter way) and return plain JSON-ready dicts. A file that is
missing means the sensor does not exist and is left out; a file that exists but cannot be read
or parsed is named in the probe's `errors` list, and the probe carries on with the rest.
"""
