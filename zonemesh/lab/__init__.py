"""The local multi-zone lab: `zonemesh-lab` (see main.py)."""
