"""normgrad study pipeline: spec -> trials -> records -> tables -> statistics -> figures/report/paper."""

__version__ = "0.1.0"
