"""The NumPy backend: the reference ops every other backend is checked against."""
