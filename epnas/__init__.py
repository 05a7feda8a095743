"""EPNAS: Efficient Progressive Neural Architecture Search.

The shared core: spec, arch, space, morph, metrics, reward, build (pure); policy,
reinforce and the search loop; store and the local executor at the edges.
"""

__version__ = "0.1.0"
