"""CervixAutoSegLib: the pure-Python core of the CervixAutoSeg Slicer extension.

Importable without Slicer.  Heavy dependencies (torch, SimpleITK, pydicom) are imported
lazily inside the functions that need them, so that importing the package is instant.
"""

__version__ = "0.1.0"
