"""Compiled Cython kernels (built from ``cython_kernels/*.pyx``); use them through :mod:`pyskim.kernels.dense`."""
