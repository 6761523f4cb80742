"""The B-mode simulator in physical units (mm, MHz, dB), one job per module: ``config`` (label names, probe
presets, ``SimulatorConfig``), ``acquisition`` (PSF widths, scan geometry and grid, scan conversion), ``phantoms``
(tissue regions), ``scenes`` (one anatomy per seed), ``render`` (the image), ``source`` (a grain source),
``inspection`` (CNR, contact sheet, PNG sample) and ``prerender`` (into prepared shards).
``data/synthetic.py`` is its public face; ``docs/simulator.md`` its physics."""
