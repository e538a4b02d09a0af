"""Tests of the local sandbox servers."""
