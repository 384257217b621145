"""The test suite, one folder per package it tests (packages, so two folders may hold files of the same name)."""
