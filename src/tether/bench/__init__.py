"""Load generators for storm tests and `tether bench`."""
