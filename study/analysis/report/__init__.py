"""Report stage: the statistics report (`markdown`) and the paper's LaTeX inputs (`latex`), read from the
files the statistics stage wrote (`common` holds what both share)."""
