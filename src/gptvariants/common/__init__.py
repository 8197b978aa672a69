"""Layer 0, used by all: value checks, atomic writes, reading user files, devices and processes, progress."""
