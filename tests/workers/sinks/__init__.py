"""Tests of the warehouse sinks."""
