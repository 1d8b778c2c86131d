"""VPN pipeline library: dataset readers, manifests, video decoding, cropping, I3D, poses and HDF5 caches.

This package never imports luigi; the Luigi tasks live in ``tasks/``.
"""

__version__ = "0.1.0"
