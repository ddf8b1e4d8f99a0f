"""Reads for pages: ready-made rows so templates hold no logic and run no queries."""
