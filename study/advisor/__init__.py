"""The advisor (issue 20): fit a rule on the committed studies' per-condition outcomes and early
gradient diagnostics, validate it on pre-registered held-out conditions, and probe a user's config.

Stages: `spec` (the pre-registration, ``advisor.yaml``) -> `units` (one row per study condition and
site, from ``results/<study>/``) -> `fit` (rule, validation, report under ``results/advisor/``);
`probe` runs the rule's diagnostic for a trial configuration (``python -m study advise``).
"""
