"""robodiff: collect demonstrations, train visuomotor diffusion policies, deploy them on robots."""

__version__ = "0.1.0"
