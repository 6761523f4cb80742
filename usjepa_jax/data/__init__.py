"""Data: the built-in ultrasound simulator (``simulator/``, its face ``synthetic.py``), real ultrasound (``decoders``
and ``containers`` read frames, ``scanning`` finds datasets, ``preprocess`` cleans frames, ``shards`` stores them
prepared, ``sources`` and ``mixture`` serve them), and the grain input pipeline (``pipeline``) that trains on
either; ``seeding`` gives every draw its seed."""
