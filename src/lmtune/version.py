"""The package version, in a module of its own: anything may read it without importing the
package root (which would load the Python API and, through it, everything else)."""

__version__ = "0.1.0"
