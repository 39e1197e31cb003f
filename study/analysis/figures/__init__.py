"""Figures stage: one module per figure family (`paired`, `curves`, `ranks`, `sweeps`) over one shared
style (`style`) and inputs (`common`); `registry.make_figures` draws every registered figure."""
