"""Multi-pass methods built on the patch API (CARVE)."""
