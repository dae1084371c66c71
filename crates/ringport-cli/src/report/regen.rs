//! `ringport report`: BENCHMARKS.md's generated sections from JSON reports.
