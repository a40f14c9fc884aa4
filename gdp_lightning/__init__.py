"""gdp-lightning: image restoration with a pretrained diffusion model as the only prior (GDP)."""

__version__ = "0.1.0"

__all__ = ["__version__", "restore", "build_module", "GDPModule", "GDPDataModule"]


def __getattr__(name):  # the heavy parts load on first use: `import gdp_lightning` stays cheap
    if name in ("restore", "build_module"):
        from . import api

        return getattr(api, name)
    if name == "GDPModule":
        from .module import GDPModule

        return GDPModule
    if name == "GDPDataModule":
        from .data import GDPDataModule

        return GDPDataModule
    raise AttributeError(f"module 'gdp_lightning' has no attribute {name!r}")
