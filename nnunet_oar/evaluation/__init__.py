"""Evaluation: per-organ metrics (``metrics``), scoring prediction folders against references
(``evaluate``), and the paper's comparison with one multi-organ network, run (``benchmark``) and
reported (``comparison``)."""
