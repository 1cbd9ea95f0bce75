"""emaprobe: what fixed-coefficient recurrent context (EMA traces) keeps, and what it loses.

Layers, imports pointing down only:
cli -> experiments -> train, probes -> models -> layers -> ops; tasks and data beside them.
"""

__version__ = "0.1.0"
