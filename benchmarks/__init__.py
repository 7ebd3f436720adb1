"""Performance benchmarks (`make bench`).

A regular package on purpose: fairscale installs a top-level `benchmarks` package that would shadow a
namespace package here.
"""
